//! A strict subset of ServiceRadar's SRQL for selecting devices.
//!
//! Guarantees: a query parses only if it starts with `in:devices` and carries at least one
//! positive filter, every key is known, and no value or list is empty — so a typo is a
//! parse error and can never widen a role to "every device". Matching is exact and
//! case-sensitive; `%` matches any (possibly empty) sequence, like SQL `LIKE`. There is no
//! way to match a literal `%`; no device attribute we select on needs one.
//!
//! `Display` prints a canonical form that parses back to an equal query.

mod parse;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::device::Device;

/// A parsed, validated target query. Filters are AND-ed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetQuery {
    filters: Vec<Filter>,
}

/// One `[!]key:value` filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Filter {
    /// `true` for `!key:value`.
    pub negated: bool,
    /// The attribute the filter looks at.
    pub key: Key,
    /// Alternatives (OR-ed); never empty, no element empty.
    pub values: Vec<String>,
    /// Whether the source wrote a `(…)` list; kept so `Display` reproduces the shape.
    pub list: bool,
}

/// The device attributes a filter may select on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// `name`
    Name,
    /// `ip` — any of the device's addresses.
    Ip,
    /// `type`
    Type,
    /// `vendor`
    Vendor,
    /// `source`
    Source,
    /// `agent`
    Agent,
    /// `gateway`
    Gateway,
    /// `partition`
    Partition,
    /// `tags.<k>`
    Tag(String),
    /// `metadata.<k>`
    Metadata(String),
}

/// Why a query was refused, with the byte offset into the query text where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {message}")]
pub struct QueryError {
    /// Byte offset into the query string.
    pub offset: usize,
    /// What is wrong, for a human.
    pub message: String,
}

impl TargetQuery {
    /// Parses and validates a query.
    pub fn parse(s: &str) -> Result<TargetQuery, QueryError> {
        parse::parse(s)
    }

    /// The filters, in source order.
    pub fn filters(&self) -> &[Filter] {
        &self.filters
    }

    /// Whether the device satisfies every filter.
    pub fn matches(&self, d: &Device) -> bool {
        self.filters.iter().all(|f| f.matches(d))
    }
}

impl Filter {
    /// Whether the device satisfies this filter (negation included). A missing attribute
    /// makes the positive filter false and therefore the negated one true.
    pub fn matches(&self, d: &Device) -> bool {
        let hit = |v: &str| self.values.iter().any(|p| wildcard_match(p, v));
        let positive = match &self.key {
            Key::Name => hit(&d.name),
            Key::Ip => d.addresses.iter().any(|a| hit(a)),
            Key::Type => d.kind.as_deref().is_some_and(hit),
            Key::Vendor => d.vendor.as_deref().is_some_and(hit),
            Key::Source => d.source.as_deref().is_some_and(hit),
            Key::Agent => d.agent.as_deref().is_some_and(hit),
            Key::Gateway => d.gateway.as_deref().is_some_and(hit),
            Key::Partition => d.partition.as_deref().is_some_and(hit),
            Key::Tag(k) => d.tags.get(k).is_some_and(|v| hit(v)),
            Key::Metadata(k) => d.metadata.get(k).is_some_and(|v| hit(v)),
        };
        positive != self.negated
    }
}

/// `%` matches any sequence; everything else matches itself exactly.
pub(crate) fn wildcard_match(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('%');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle.split_last() else {
        // No `%` at all: exact match.
        return rest.is_empty();
    };
    for seg in middle {
        // Leftmost match is always safe with a single wildcard kind: taking the earliest
        // occurrence leaves the most room for the remaining segments.
        match rest.find(seg) {
            Some(i) => rest = rest.get(i + seg.len()..).unwrap_or(""),
            None => return false,
        }
    }
    rest.ends_with(last)
}

impl Key {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Name => f.write_str("name"),
            Key::Ip => f.write_str("ip"),
            Key::Type => f.write_str("type"),
            Key::Vendor => f.write_str("vendor"),
            Key::Source => f.write_str("source"),
            Key::Agent => f.write_str("agent"),
            Key::Gateway => f.write_str("gateway"),
            Key::Partition => f.write_str("partition"),
            Key::Tag(k) => write!(f, "tags.{k}"),
            Key::Metadata(k) => write!(f, "metadata.{k}"),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f)
    }
}

fn write_value(f: &mut fmt::Formatter<'_>, v: &str) -> fmt::Result {
    if parse::is_bare(v) {
        return f.write_str(v);
    }
    f.write_str("\"")?;
    for c in v.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negated {
            f.write_str("!")?;
        }
        self.key.write(f)?;
        f.write_str(":")?;
        match self.values.as_slice() {
            [single] if !self.list => write_value(f, single),
            values => {
                f.write_str("(")?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write_value(f, v)?;
                }
                f.write_str(")")
            }
        }
    }
}

impl fmt::Display for TargetQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("in:devices")?;
        for filter in &self.filters {
            write!(f, " {filter}")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for TargetQuery {
    type Error = QueryError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        TargetQuery::parse(&s)
    }
}

impl From<TargetQuery> for String {
    fn from(q: TargetQuery) -> String {
        q.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::wildcard_match as m;

    #[test]
    fn wildcard_semantics() {
        assert!(m("abc", "abc"));
        assert!(!m("abc", "abcd"));
        assert!(!m("abc", "ABC"));
        assert!(m("%", ""));
        assert!(m("%", "anything"));
        assert!(m("a%", "a"));
        assert!(m("a%", "abc"));
        assert!(!m("a%", "ba"));
        assert!(m("%c", "abc"));
        assert!(m("a%c", "ac"));
        assert!(m("a%b%c", "a_b_c"));
        assert!(!m("a%a", "a"));
        assert!(m("a%a", "aa"));
        assert!(m("%b%", "abc"));
        assert!(!m("%x%", "abc"));
        assert!(m("%%", "x"));
        assert!(m("ab%bc", "abbc"));
        assert!(!m("ab%bc", "abc"));
    }
}
