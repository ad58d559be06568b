//! Live sessions of directory users. A certificate or a console ticket was issued on
//! the groups the directory listed then; heartbeats ask the directory again about each
//! account with live sessions, at most once a minute, so a user locked, removed, told to
//! change their password or taken out of a group in the directory loses the sessions it
//! granted — not only the next one.

use super::IdentityService;
use crate::audit::AuditEvent;
use crate::error::CaError;
use crate::service::auth::Refusal;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// How old a directory answer about a live session's account may get.
pub(crate) const RECHECK_SECS: u64 = 60;
/// One directory question may hold a heartbeat this long; a slower one is tried again
/// at the next heartbeat.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(3);
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
}

impl IdentityService {
    /// The standing of each directory account in `accounts`, asking the directory about
    /// those not asked within [`RECHECK_SECS`]. An account the directory cannot be asked
    /// about keeps its last answer (or has none): a directory outage stops new sessions,
    /// it does not end live ones.
    pub(super) async fn directory_standings(
        &self,
        accounts: &BTreeSet<&str>,
    ) -> Result<HashMap<String, Standing>, CaError> {
        let now = self.core.now();
        let due: Vec<&str> = {
            let answers = self.directory_answers.lock();
            let stale = |a: &&str| answers.get(*a).is_none_or(|(at, _)| at.saturating_add(RECHECK_SECS) <= now);
            accounts.iter().copied().filter(stale).take(RECHECKS_PER_HEARTBEAT).collect()
        };
        for account in due {
            // `recheck_directory` keeps what it hears (see `DirectoryAnswers::remember`).
            match tokio::time::timeout(RECHECK_TIMEOUT, self.recheck_directory(account)).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(refusal))) if !refusal.unavailable => {
                    let event = AuditEvent::SessionRefused {
                        username: account.to_owned(),
                        source: "ldap".to_owned(),
                        reason: refusal.reason,
                    };
                    self.core.audit_alone(event).await?;
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Err(_))) | Err(_) => {
                    tracing::warn!(%account, "the directory could not be asked about a live session; its last answer stands");
                }
            }
        }
        let mut answers = self.directory_answers.lock();
        // Accounts whose sessions ended are forgotten after a while.
        answers.retain(|account, (at, _)| {
            accounts.contains(account.as_str()) || at.saturating_add(10 * RECHECK_SECS) > now
        });
        Ok(accounts.iter().filter_map(|a| answers.get(*a).map(|(_, s)| ((*a).to_owned(), s.clone()))).collect())
    }
}
