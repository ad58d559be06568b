//! Logged-in connections per user. Once a connection has logged in, the startup limits
//! (`startups`) no longer hold it, and a connection needs no channel to stay: without a
//! cap, one user's certificate could open logged-in connections until the process runs
//! out of file descriptors and both listeners stop accepting anyone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Logged-in connections a user may hold on one bastion by default: many more than a
/// person or an automation running jobs in parallel uses (OpenSSH multiplexing needs one),
/// far fewer than the descriptors a bastion has.
pub(crate) const DEFAULT_PER_USER: usize = 256;

/// The count per user (the certificate's key id: the CA's account name).
pub(crate) struct LoggedIn {
    per_user: usize,
    counts: Mutex<HashMap<String, usize>>,
}

/// One logged-in connection's place, given back when the connection ends.
pub(crate) struct LoginSlot {
    table: Arc<LoggedIn>,
    user: String,
}

impl LoggedIn {
    pub(crate) fn new(per_user: usize) -> Arc<LoggedIn> {
        Arc::new(LoggedIn { per_user, counts: Mutex::new(HashMap::new()) })
    }

    /// A place for one more connection of `user`, or `None` when `user` holds all theirs.
    pub(crate) fn take(self: &Arc<Self>, user: &str) -> Option<LoginSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(user.to_owned()).or_insert(0);
        if *count >= self.per_user {
            return None;
        }
        *count += 1;
        Some(LoginSlot { table: Arc::clone(self), user: user.to_owned() })
    }
}

impl Drop for LoginSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_their_share_and_gets_places_back() {
        let table = LoggedIn::new(2);
        let (a1, a2) = (table.take("alice"), table.take("alice"));
        assert!(a1.is_some() && a2.is_some());
        assert!(table.take("alice").is_none(), "a third place for alice");
        let bob = table.take("bob");
        assert!(bob.is_some(), "another user is not held back");
        drop(a1);
        assert!(table.take("alice").is_some(), "a place comes back when its connection ends");
        drop((a2, bob));
        assert!(table.counts.lock().unwrap_or_else(|e| e.into_inner()).len() <= 1, "no entry kept for nobody");
    }
}
