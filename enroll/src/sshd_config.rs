//! Reading `sshd_config` the way sshd does, just enough to decide whether our drop-in
//! can take effect: sshd reads files in order and, for the keywords we set, the first
//! value wins — so any earlier setting would silently override ours.

use crate::error::{Error, Result};
use crate::root::Root;
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

/// What sshd reads, with every `Include` followed, split by whether it comes before ours.
#[derive(Debug)]
pub struct Scan {
    /// True when the main config includes `<root>/etc/ssh/sshd_config.d/*.conf` outside
    /// any `Match` block.
    pub includes_drop_ins: bool,
    /// Everything sshd reads before our drop-in (first value wins, so these beat ours).
    pub earlier: Vec<Directive>,
    /// Everything it reads after ours.
    pub later: Vec<Directive>,
}

/// sshd refuses a configuration nested deeper than this (`SERVCONF_MAX_DEPTH`).
const MAX_INCLUDE_DEPTH: usize = 16;

/// Where sshd resolves a relative `Include` (its compiled-in `SSHDIR`).
const SSHDIR: &str = "/etc/ssh";

pub fn scan(root: &Root) -> Result<Scan> {
    let mut walk = Walk {
        drop_ins: root.drop_in_dir().join("*.conf"),
        ours: root.drop_in(),
        includes_drop_ins: false,
        passed_ours: false,
        earlier: Vec::new(),
        later: Vec::new(),
    };
    walk.file(&root.sshd_config(), false, 0)?;
    Ok(Scan { includes_drop_ins: walk.includes_drop_ins, earlier: walk.earlier, later: walk.later })
}

/// Reads files in sshd's order: an `Include` is expanded where it stands, its glob
/// sorted in byte order (glob(3) in the C locale), and everything an `Include` inside a
/// `Match` block brings in is conditional too. Our drop-in takes its place in the
/// drop-in glob whether or not it exists yet.
struct Walk {
    drop_ins: PathBuf,
    ours: PathBuf,
    includes_drop_ins: bool,
    passed_ours: bool,
    earlier: Vec<Directive>,
    later: Vec<Directive>,
}

impl Walk {
    fn file(&mut self, path: &Path, in_match: bool, depth: usize) -> Result<()> {
        for mut d in parse(&read(path)?, path) {
            d.in_match |= in_match;
            if d.keyword == "include" {
                for pattern in d.value.split_whitespace() {
                    self.include(pattern, &d, depth)?;
                }
            }
            if self.passed_ours { self.later.push(d) } else { self.earlier.push(d) }
        }
        Ok(())
    }

    fn include(&mut self, pattern: &str, at: &Directive, depth: usize) -> Result<()> {
        if depth + 1 > MAX_INCLUDE_DEPTH {
            return Err(Error::Refused(format!(
                "{}:{}: Include nested deeper than sshd allows ({MAX_INCLUDE_DEPTH})",
                at.file.display(),
                at.line
            )));
        }
        let pattern = if pattern.starts_with('/') { PathBuf::from(pattern) } else { Path::new(SSHDIR).join(pattern) };
        let is_drop_ins = pattern == self.drop_ins && !at.in_match;
        let unreadable = |e: &dyn std::fmt::Display| {
            Error::Refused(format!(
                "{}:{}: cannot follow Include {}: {e}",
                at.file.display(),
                at.line,
                pattern.display()
            ))
        };
        // glob(3) as sshd calls it: `*` matches neither `/` nor a leading dot.
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let matches = glob::glob_with(&pattern.to_string_lossy(), options).map_err(|e| unreadable(&e))?;
        let mut files = matches.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| unreadable(&e))?;
        files.sort_by(|a, b| a.as_os_str().as_encoded_bytes().cmp(b.as_os_str().as_encoded_bytes()));
        for file in files {
            if is_drop_ins
                && !self.passed_ours
                && file.as_os_str().as_encoded_bytes() > self.ours.as_os_str().as_encoded_bytes()
            {
                self.passed_ours = true;
            }
            if file == self.ours {
                continue;
            }
            self.file(&file, at.in_match, depth + 1)?;
        }
        if is_drop_ins {
            self.includes_drop_ins = true;
            self.passed_ours = true;
        }
        Ok(())
    }
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

    #[test]
    fn an_include_loop_is_refused_not_followed_forever() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.drop_in_dir()).unwrap();
        let main = root.sshd_config();
        std::fs::write(&main, format!("Include {}\nInclude {}/*.conf\n", main.display(), root.drop_in_dir().display()))
            .unwrap();
        let err = scan(&root).unwrap_err().to_string();
        assert!(err.contains("nested deeper than sshd allows"), "{err}");
    }
}
