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

/// How old a directory answer about a live session's account may get; also how long an
/// account the directory could not be asked about waits before it is asked again.
pub(crate) const RECHECK_SECS: u64 = 60;
/// How long one heartbeat waits for the directory, for all its questions together
/// (they are asked side by side): a directory that hangs costs a heartbeat this once,
/// well inside the bastion's 10 s call timeout, never this per account.
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

/// When an account was last asked about, and the last definite answer.
struct Asked {
    at: u64,
    standing: Option<Standing>,
}

/// Per account with live sessions: when it was last asked about, and the last answer.
#[derive(Default)]
pub(crate) struct DirectoryAnswers(Mutex<HashMap<String, Asked>>);

impl DirectoryAnswers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Asked>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `account` was asked about at `now`; a definite answer (not "the directory could
    /// not be asked") replaces the last one, any other keeps it.
    pub(crate) fn remember(&self, account: &str, now: u64, answer: Option<&Result<Vec<String>, Refusal>>) {
        let standing = match answer {
            Some(Ok(groups)) => Some(Standing::Groups(groups.clone())),
            Some(Err(refusal)) if !refusal.unavailable => Some(Standing::Refused),
            _ => None,
        };
        let mut answers = self.lock();
        let asked = answers.entry(account.to_owned()).or_insert(Asked { at: now, standing: None });
        asked.at = now;
        if standing.is_some() {
            asked.standing = standing;
        }
    }

    /// Of `accounts`, those not asked about within [`RECHECK_SECS`], at most
    /// [`RECHECKS_PER_HEARTBEAT`] of them.
    pub(super) fn due<'a>(&self, accounts: &BTreeSet<&'a str>, now: u64) -> Vec<&'a str> {
        let answers = self.lock();
        let stale = |a: &&str| answers.get(*a).is_none_or(|asked| asked.at.saturating_add(RECHECK_SECS) <= now);
        accounts.iter().copied().filter(stale).take(RECHECKS_PER_HEARTBEAT).collect()
    }

    /// The groups the directory last listed for `account`, if that was its answer.
    pub(super) fn groups(&self, account: &str) -> Option<Vec<String>> {
        match self.lock().get(account).and_then(|asked| asked.standing.clone()) {
            Some(Standing::Groups(groups)) => Some(groups),
            _ => None,
        }
    }

    /// The last answer about each of `accounts` that has one; answers about other
    /// accounts (whose sessions ended) are forgotten after a while.
    pub(super) fn standings(&self, accounts: &BTreeSet<&str>, now: u64) -> HashMap<String, Standing> {
        let mut answers = self.lock();
        answers.retain(|account, asked| {
            accounts.contains(account.as_str()) || asked.at.saturating_add(10 * RECHECK_SECS) > now
        });
        accounts
            .iter()
            .filter_map(|a| answers.get(*a).and_then(|asked| asked.standing.clone()).map(|s| ((*a).to_owned(), s)))
            .collect()
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
