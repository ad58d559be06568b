//! What directories last said about accounts with live sessions (the identity
//! service keeps it; see `IdentityService::directory_standings`). Live sessions of
//! directory users. A certificate or a console ticket was issued on
//! the groups the directory listed then; heartbeats ask the directory again about each
//! account with live sessions, at most once a minute, so a user locked, removed, told to
//! change their password or taken out of a group in the directory loses the sessions it
//! granted — not only the next one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// How old a directory answer about a live session's account may get.
pub(crate) const RECHECK_SECS: u64 = 60;
/// One directory question may hold a heartbeat this long; a slower one is tried again
/// at the next heartbeat.
pub(super) const RECHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Directory questions asked per heartbeat at most; the rest wait for the next one.
const RECHECKS_PER_HEARTBEAT: usize = 16;

/// What the directory last said about an account.
#[derive(Debug, Clone)]
pub(super) enum Standing {
    /// Its groups now.
    Groups(Vec<String>),
    /// It may no longer act (locked, removed, password expired, name taken over).
    Refused,
}

/// The last answer per account, with when it was given.
#[derive(Default)]
pub(crate) struct DirectoryAnswers(Mutex<HashMap<String, (u64, Standing)>>);

impl DirectoryAnswers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Standing)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a definite answer (not "the directory could not be asked") about `account`.
    pub(crate) fn remember(&self, account: &str, now: u64, answer: &Result<Vec<String>, Refusal>) {
        let standing = match answer {
            Ok(groups) => Standing::Groups(groups.clone()),
            Err(refusal) if !refusal.unavailable => Standing::Refused,
            Err(_) => return,
        };
        self.lock().insert(account.to_owned(), (now, standing));
    }

    /// Of `accounts`, those not asked about within [`RECHECK_SECS`], at most
    /// [`RECHECKS_PER_HEARTBEAT`] of them.
    pub(super) fn due<'a>(&self, accounts: &BTreeSet<&'a str>, now: u64) -> Vec<&'a str> {
        let answers = self.lock();
        let stale = |a: &&str| answers.get(*a).is_none_or(|(at, _)| at.saturating_add(RECHECK_SECS) <= now);
        accounts.iter().copied().filter(stale).take(RECHECKS_PER_HEARTBEAT).collect()
    }

    /// The last answer about each of `accounts` that has one; answers about other
    /// accounts (whose sessions ended) are forgotten after a while.
    pub(super) fn standings(&self, accounts: &BTreeSet<&str>, now: u64) -> HashMap<String, Standing> {
        let mut answers = self.lock();
        answers.retain(|account, (at, _)| {
            accounts.contains(account.as_str()) || at.saturating_add(10 * RECHECK_SECS) > now
        });
        accounts.iter().filter_map(|a| answers.get(*a).map(|(_, s)| ((*a).to_owned(), s.clone()))).collect()
    }
}

/// Why a directory account may no longer act (see [`super::IdentityService::recheck_directory`]).
pub(crate) struct Refusal {
    /// The audit reason code.
    pub(crate) reason: &'static str,
    /// What the denial says.
    pub(crate) text: &'static str,
    /// The directory could not be asked (503 rather than 401).
    pub(crate) unavailable: bool,
}
