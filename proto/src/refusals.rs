//! Refusals of unauthenticated peers: recorded once, then counted.
//!
//! A refusal costs an attacker nothing; it must not cost us one hash-chained audit
//! record each (a cheap way to grow the audit log and slow issuance). Accountability —
//! who tried, from where, how often — survives aggregation: within a window, the first
//! refusal of each (source, reason, user) is recorded on its own, so a single mistyped
//! password is as visible as ever; repeats are counted, and the window's counts become
//! one summary record ([`RefusalSummary`]). Refusals that are cheap by design (a full
//! connection table, a socket that never sent a credential) are only counted. At most
//! [`MAX_KEYS`] keys per window get a record or a count of their own; beyond that they
//! only add to `overflow`. A window therefore costs at most `MAX_KEYS + 1` records, from
//! however many sources.
//!
//! The CA keeps one tally for its own refusals (sign-in, enrollment, console tickets);
//! each bastion keeps one for its front door and sends the summaries as audit events.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Distinct (source, reason, user) keys per window with a record or count of their own.
pub const MAX_KEYS: usize = 256;
/// Distinct user names kept per summary entry.
const MAX_USERS: usize = 4;

/// Counted refusals of one source for one reason within a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RefusalCount {
    /// The peer's IP address.
    pub source: String,
    /// A stable code, e.g. `login_failed:bad_credentials` or `max_startups`.
    pub reason: String,
    /// Refusals not recorded on their own.
    pub counted: u64,
    /// Up to four of the (sanitized) user names they named.
    pub users: Vec<String>,
}

/// One window's counted refusals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RefusalSummary {
    /// Unix seconds: the window's first refusal and the end of the window.
    pub window_start: u64,
    pub window_end: u64,
    pub counts: Vec<RefusalCount>,
    /// Refusals counted under no entry: the window held more than [`MAX_KEYS`] keys.
    pub overflow: u64,
}

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first of its key in this window: write its own record.
    Record,
    /// Counted; the window's summary reports it.
    Counted,
}

#[derive(Debug, Default)]
struct Entry {
    counted: u64,
    users: BTreeSet<String>,
}

/// One window of refusals. Not synchronized: callers hold it behind a mutex.
#[derive(Debug)]
pub struct RefusalTally {
    window_secs: u64,
    /// When the current window opened (its first refusal).
    opened: Option<u64>,
    /// By (source, reason); the user is part of the key through `recorded`.
    entries: BTreeMap<(String, String), Entry>,
    /// Keys whose first refusal was recorded in this window.
    recorded: BTreeSet<(String, String, String)>,
    overflow: u64,
}

impl RefusalTally {
    pub fn new(window_secs: u64) -> Self {
        Self {
            window_secs: window_secs.max(1),
            opened: None,
            entries: BTreeMap::new(),
            recorded: BTreeSet::new(),
            overflow: 0,
        }
    }

    /// Notes a refusal that deserves its own record the first time its key is seen in
    /// a window. Call [`RefusalTally::take_due`] first, so a finished window is reported
    /// before a new one starts.
    pub fn note(&mut self, now: u64, source: &str, reason: &str, user: &str) -> Verdict {
        self.opened.get_or_insert(now);
        let key = (source.to_owned(), reason.to_owned(), user.to_owned());
        if !self.recorded.contains(&key) && self.keys() < MAX_KEYS {
            self.recorded.insert(key);
            return Verdict::Record;
        }
        self.count(source, reason, user);
        Verdict::Counted
    }

    /// Counts a refusal that never gets a record of its own.
    pub fn count_only(&mut self, now: u64, source: &str, reason: &str) {
        self.opened.get_or_insert(now);
        self.count(source, reason, "");
    }

    fn keys(&self) -> usize {
        self.recorded.len() + self.entries.len()
    }

    fn count(&mut self, source: &str, reason: &str, user: &str) {
        let key = (source.to_owned(), reason.to_owned());
        if !self.entries.contains_key(&key) && self.keys() >= MAX_KEYS {
            self.overflow = self.overflow.saturating_add(1);
            return;
        }
        let entry = self.entries.entry(key).or_default();
        entry.counted = entry.counted.saturating_add(1);
        if !user.is_empty() && entry.users.len() < MAX_USERS {
            entry.users.insert(user.to_owned());
        }
    }

    /// The summary of a window that has ended by `now`, and a fresh window. `None` while
    /// the window is open, or when it counted nothing (every refusal has its record).
    pub fn take_due(&mut self, now: u64) -> Option<RefusalSummary> {
        let opened = self.opened?;
        if now < opened.saturating_add(self.window_secs) {
            return None;
        }
        self.take(now)
    }

    /// The summary so far, whether or not the window has ended (at shutdown).
    pub fn take(&mut self, now: u64) -> Option<RefusalSummary> {
        let opened = self.opened.take()?;
        self.recorded.clear();
        let entries = std::mem::take(&mut self.entries);
        let overflow = std::mem::take(&mut self.overflow);
        if entries.is_empty() && overflow == 0 {
            return None;
        }
        let counts = entries
            .into_iter()
            .map(|((source, reason), e)| RefusalCount {
                source,
                reason,
                counted: e.counted,
                users: e.users.into_iter().collect(),
            })
            .collect();
        Some(RefusalSummary { window_start: opened, window_end: now, counts, overflow })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_refusal_of_each_key_is_recorded_and_repeats_are_counted() {
        let mut t = RefusalTally::new(60);
        assert_eq!(t.note(100, "192.0.2.1", "login_failed:bad_credentials", "alice"), Verdict::Record);
        for _ in 0..49 {
            assert_eq!(t.note(101, "192.0.2.1", "login_failed:bad_credentials", "alice"), Verdict::Counted);
        }
        assert_eq!(t.note(102, "192.0.2.1", "login_failed:bad_credentials", "bob"), Verdict::Record);
        assert_eq!(t.note(102, "192.0.2.2", "login_failed:bad_credentials", "alice"), Verdict::Record);
        t.count_only(103, "192.0.2.3", "max_startups");
        assert_eq!(t.take_due(159), None, "the window is still open");
        let s = t.take_due(160).unwrap();
        assert_eq!((s.window_start, s.window_end, s.overflow), (100, 160, 0));
        assert_eq!(
            s.counts,
            [
                RefusalCount {
                    source: "192.0.2.1".into(),
                    reason: "login_failed:bad_credentials".into(),
                    counted: 49,
                    users: vec!["alice".into()],
                },
                RefusalCount { source: "192.0.2.3".into(), reason: "max_startups".into(), counted: 1, users: vec![] },
            ]
        );
        // A new window records the first refusal again.
        assert_eq!(t.note(200, "192.0.2.1", "login_failed:bad_credentials", "alice"), Verdict::Record);
        assert_eq!(t.take_due(300), None, "nothing was counted: no summary");
    }

    #[test]
    fn a_window_costs_at_most_max_keys_records_however_many_sources() {
        let mut t = RefusalTally::new(60);
        let mut records = 0;
        let source = |i: u32| std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i)).to_string();
        for i in 0..10_000u32 {
            if t.note(1, &source(i), "bastion:cert_expired", &format!("user{i}")) == Verdict::Record {
                records += 1;
            }
        }
        for i in 0..10_000u32 {
            t.count_only(1, &source(i), "max_startups");
        }
        assert_eq!(records, MAX_KEYS);
        let s = t.take(2).unwrap();
        assert!(s.counts.is_empty(), "every key went to its own record: {:?}", s.counts.len());
        assert_eq!(s.overflow, 2 * 10_000 - MAX_KEYS as u64);
    }

    #[test]
    fn user_samples_are_bounded() {
        let mut t = RefusalTally::new(60);
        for i in 0..100 {
            t.count_only(1, "192.0.2.1", "x");
            t.note(1, "192.0.2.1", "y", &format!("u{i:03}"));
            t.note(1, "192.0.2.1", "y", &format!("u{i:03}"));
        }
        let s = t.take(2).unwrap();
        let y = s.counts.iter().find(|c| c.reason == "y").unwrap();
        assert_eq!(y.users.len(), MAX_USERS);
    }
}
