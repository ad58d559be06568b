//! Field-level checks shared by the item validators: names, logins, durations, target
//! queries (with positions mapped into the file), and OpenSSH critical options.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawCriticalOptions, RawSession};
use super::{Errors, File};
use crate::model::SessionLimits;
use crate::srql::TargetQuery;

type S = Spanned<String>;

/// Extensions OpenSSH defines for user certificates; anything else is almost certainly a
/// typo and would be silently ignored by sshd.
pub(super) const EXTENSIONS: &[&str] = &[
    "permit-pty",
    "permit-port-forwarding",
    "permit-agent-forwarding",
    "permit-X11-forwarding",
    "permit-user-rc",
    "no-touch-required",
];

/// `[A-Za-z0-9_.-]+` — names of roles, deny statements and rules.
pub(super) fn is_item_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `^[a-z_][a-z0-9_.-]{0,31}$` — what useradd accepts by default, minus `$`.
pub(super) fn is_login(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    first_ok
        && s.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

/// Users and groups come from external directories, so any printable text is accepted;
/// control characters are refused because they would corrupt logs and canonical forms.
pub(super) fn is_subject(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(char::is_control)
}

impl Errors {
    pub(super) fn count(&self) -> usize {
        self.0.len()
    }
}

pub(super) fn item_name(f: &File<'_>, errs: &mut Errors, s: &S, what: &str) -> String {
    if !is_item_name(s.get_ref()) {
        errs.at(f, s.span().start, format!("invalid {what} name {:?} (allowed: A-Z a-z 0-9 _ . -)", s.get_ref()));
    }
    s.get_ref().clone()
}

/// User names in bindings and denies are account names (`alice` is the local user,
/// `ldap:alice` and `oidc:alice` the directory's and the IdP's; see [`crate::account`]).
pub(super) fn is_account(s: &str) -> bool {
    crate::account::parse_account(s).is_some()
}

/// The error for a user name that is not an account name, with the fix in it.
pub(super) fn invalid_account(name: &str) -> String {
    format!(
        "invalid user name {name:?} (users are `NAME` for a local user, `ldap:NAME` or `oidc:NAME` for a directory \
         or identity-provider user; NAME: {})",
        crate::account::USER_NAME_RULE
    )
}

/// A group name as bindings and deny statements give it: a subject with no space at
/// either end, and when it reads as source-qualified (`ldap:admins`), a source spelled
/// as the policy spells it and a group after it. `LDAP:admins` or `ldap: admins` would
/// load as a bare group no directory reports — a deny that denies nobody.
pub(super) fn is_group(s: &str) -> bool {
    let trimmed = |s: &str| !s.is_empty() && s.trim() == s;
    let known =
        |prefix: &str| crate::UserSource::ALL.iter().any(|source| source.as_str().eq_ignore_ascii_case(prefix.trim()));
    is_subject(s)
        && trimmed(s)
        && match s.split_once(':') {
            Some((prefix, group)) if known(prefix) => crate::UserSource::parse(prefix).is_some() && trimmed(group),
            _ => true,
        }
}

/// [`subjects`] for group names ([`is_group`]).
pub(super) fn groups(f: &File<'_>, errs: &mut Errors, list: &[S]) -> BTreeSet<String> {
    for s in list.iter().filter(|s| !is_group(s.get_ref())) {
        errs.at(f, s.span().start, invalid_group(s.get_ref()));
    }
    list.iter().map(|s| s.get_ref().clone()).collect()
}

pub(super) fn invalid_group(s: &str) -> String {
    format!("invalid group name {s:?} (no space at either end; a source is written `ldap:`, `oidc:` or `local:`)")
}

pub(super) fn subjects(f: &File<'_>, errs: &mut Errors, list: &[S], what: &str) -> BTreeSet<String> {
    for s in list.iter().filter(|s| !is_subject(s.get_ref())) {
        errs.at(f, s.span().start, format!("invalid {what} name {:?}", s.get_ref()));
    }
    list.iter().map(|s| s.get_ref().clone()).collect()
}

pub(super) fn accounts(f: &File<'_>, errs: &mut Errors, list: &[S]) -> BTreeSet<String> {
    for s in list.iter().filter(|s| !is_account(s.get_ref())) {
        errs.at(f, s.span().start, invalid_account(s.get_ref()));
    }
    list.iter().map(|s| s.get_ref().clone()).collect()
}

pub(super) fn duration(f: &File<'_>, errs: &mut Errors, s: &S, field: &str) -> Option<Duration> {
    match humantime::parse_duration(s.get_ref()) {
        Ok(d) if d.is_zero() => {
            errs.at(f, s.span().start, format!("`{field}` must be greater than zero"));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errs.at(f, s.span().start, format!("invalid duration {:?} for `{field}`: {e}", s.get_ref()));
            None
        }
    }
}

/// Byte offset in the file of byte `inner` of a TOML string's decoded content. Exact for
/// literal strings and for basic strings without escapes; otherwise the string's start.
fn content_offset(text: &str, span: Range<usize>, inner: usize) -> usize {
    let raw = text.get(span.clone()).unwrap_or("");
    let (open, literal) = if raw.starts_with("'''") {
        (3, true)
    } else if raw.starts_with("\"\"\"") {
        (3, false)
    } else {
        (1, raw.starts_with('\''))
    };
    let mut start = span.start + open;
    if open == 3 {
        // TOML drops a newline directly after a multi-line string's opening delimiter.
        let after = raw.get(3..).unwrap_or("");
        start += if after.starts_with("\r\n") { 2 } else { usize::from(after.starts_with('\n')) };
    }
    if literal || !raw.contains('\\') { start + inner } else { span.start }
}

pub(super) fn targets(f: &File<'_>, errs: &mut Errors, s: &S) -> Option<TargetQuery> {
    match TargetQuery::parse(s.get_ref()) {
        Ok(q) => Some(q),
        Err(e) => {
            let at = content_offset(f.text, s.span(), e.offset);
            errs.at(f, at, format!("invalid target query: {}", e.message));
            None
        }
    }
}

fn source_address_entry(entry: &str) -> Result<(), String> {
    let (addr, prefix) = match entry.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (entry, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| format!("`{entry}` is not an IP address or CIDR"))?;
    let Some(prefix) = prefix else { return Ok(()) };
    let bits: u32 = if addr.is_ipv4() { 32 } else { 128 };
    let len: u32 = prefix
        .parse()
        .ok()
        .filter(|l| *l <= bits && !prefix.starts_with('+'))
        .ok_or_else(|| format!("`{entry}` has an invalid prefix length"))?;
    let value: u128 = match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let host_mask = if len >= bits { 0 } else { (1u128 << (bits - len)) - 1 };
    // sshd refuses such entries, which would make the certificate unusable; say so now.
    if value & host_mask != 0 {
        return Err(format!("`{entry}` has host bits set beyond the /{len} prefix"));
    }
    Ok(())
}

pub(super) fn critical_options(f: &File<'_>, errs: &mut Errors, raw: RawCriticalOptions) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(fc) = raw.force_command {
        let v = fc.get_ref();
        if v.trim().is_empty() || v.contains(['\0', '\n', '\r']) {
            errs.at(f, fc.span().start, "`force-command` must be non-empty and contain no NUL or newline");
        }
        out.insert("force-command".to_owned(), fc.into_inner());
    }
    if let Some(sa) = raw.source_address {
        let v = sa.get_ref();
        for entry in v.split(',') {
            if let Err(m) = source_address_entry(entry) {
                errs.at(f, sa.span().start, format!("invalid `source-address`: {m}"));
            }
        }
        out.insert("source-address".to_owned(), sa.into_inner());
    }
    if let Some(vr) = raw.verify_required {
        if !vr.get_ref().is_empty() {
            errs.at(f, vr.span().start, "`verify-required` takes no value (use \"\")");
        }
        out.insert("verify-required".to_owned(), vr.into_inner());
    }
    out
}

/// Longest idle or absolute session limit. Bastions add these to clock readings; an
/// unbounded value (`"18446744073709551615s"` parses) would overflow that sum.
pub(super) const MAX_SESSION_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);

pub(super) fn session(f: &File<'_>, errs: &mut Errors, raw: RawSession) -> SessionLimits {
    let mut out = SessionLimits::default();
    let mut limit = |s: &Option<S>, field: &str| {
        let s = s.as_ref()?;
        let d = duration(f, errs, s, field)?;
        if d > MAX_SESSION_LIMIT {
            errs.at(f, s.span().start, format!("`{field}` must be at most 365 days"));
            return None;
        }
        Some(d)
    };
    if let Some(d) = limit(&raw.idle, "idle") {
        out.idle = d;
    }
    if let Some(d) = limit(&raw.absolute, "absolute") {
        out.absolute = d;
    }
    // An omitted cap keeps its bounded default (`SessionLimits::default`).
    let mut cap = |v: Option<Spanned<u32>>, field: &str, default: &mut Option<u32>| {
        let Some(v) = v else { return };
        if *v.get_ref() == 0 {
            errs.at(f, v.span().start, format!("`{field}` must be at least 1 (omit it for the default)"));
        }
        *default = Some(v.into_inner());
    };
    cap(raw.max_per_user, "max_per_user", &mut out.max_per_user);
    cap(raw.max_per_device, "max_per_device", &mut out.max_per_device);
    cap(raw.max_per_agent, "max_per_agent", &mut out.max_per_agent);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins() {
        for ok in ["root", "_x", "a", "pve-admin", "a.b_c-d9", "abcdefghijklmnopqrstuvwxyz012345"] {
            assert!(is_login(ok), "{ok}");
        }
        for bad in ["", "Root", "9a", "-a", "a b", "a$", "abcdefghijklmnopqrstuvwxyz0123456", "é"] {
            assert!(!is_login(bad), "{bad}");
        }
    }

    #[test]
    fn source_addresses() {
        for ok in ["10.0.0.0/8", "192.168.1.5", "::1", "2001:db8::/32", "0.0.0.0/0", "10.1.2.3/32"] {
            assert_eq!(source_address_entry(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            " 10.0.0.1",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "host",
            "2001:db8::1/32",
            "10.0.0.0/+8",
            "::/129",
        ] {
            assert!(source_address_entry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_offsets() {
        let t = "x = 'abc'";
        assert_eq!(content_offset(t, 4..9, 1), 6);
        let t = "x = \"abc\"";
        assert_eq!(content_offset(t, 4..9, 1), 6);
        let t = "x = \"a\\\"c\"";
        assert_eq!(content_offset(t, 4..10, 2), 4);
        let t = "x = '''\nabc'''";
        assert_eq!(content_offset(t, 4..14, 1), 9);
    }
}
