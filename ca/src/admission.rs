//! Bounds on the work unauthenticated callers can make the CA do.
//!
//! A password check costs an argon2id hash (~19 MiB and tens of milliseconds of a core),
//! a directory sign-in an LDAP bind, a single sign-on step a call to the identity
//! provider. Without a bound, a few hundred simultaneous anonymous requests take the
//! memory and the cores (seen: 0.66 → 3.9 GB, 42 s logins). Each kind of work gets a
//! [`WorkLimit`]: a fixed number run at once, a bounded queue waits up to a deadline, and
//! everything beyond is refused at once with "busy" (HTTP 503 with `Retry-After`),
//! counted for the operator.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Refused: the caller may retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub retry_after: u64,
}

pub struct WorkLimit {
    name: &'static str,
    running: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
    deadline: Duration,
    refused: AtomicU64,
}

impl WorkLimit {
    /// `concurrent` run at once; up to `max_waiting` more wait at most `deadline`.
    pub fn new(name: &'static str, concurrent: usize, max_waiting: usize, deadline: Duration) -> Self {
        WorkLimit {
            name,
            running: Semaphore::new(concurrent.max(1)),
            waiting: AtomicUsize::new(0),
            max_waiting,
            deadline,
            refused: AtomicU64::new(0),
        }
    }

    /// Password hashing: one argon2id at a time per core (its memory cost times the
    /// cores is the most it holds), a queue of 32 per core waiting up to 3 s — about what
    /// those cores verify in that time.
    pub fn password_hashing() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        WorkLimit::new("password_hashing", cores, 32 * cores, Duration::from_secs(3))
    }

    /// Calls that wait on another server (LDAP binds, identity-provider requests): cheap
    /// for us but each holds a connection and a task; 16 at once, 64 waiting up to 5 s.
    pub fn remote(name: &'static str) -> Self {
        WorkLimit::new(name, 16, 64, Duration::from_secs(5))
    }

    /// Waits for a turn, or refuses when the queue is full or the deadline passes.
    pub async fn enter(&self) -> Result<SemaphorePermit<'_>, Busy> {
        if let Ok(permit) = self.running.try_acquire() {
            return Ok(permit);
        }
        let busy = || {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(work = self.name, "refused unauthenticated work: too many at once");
            Busy { retry_after: self.deadline.as_secs().max(1) }
        };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(busy());
        }
        let turn = tokio::time::timeout(self.deadline, self.running.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match turn {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(busy()),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Requests refused since start (the `portcullis_ca_busy_refusals_total` metric).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn runs_n_queues_m_refuses_the_rest() {
        let limit = Arc::new(WorkLimit::new("t", 2, 3, Duration::from_secs(3)));
        let a = limit.enter().await.unwrap();
        let _b = limit.enter().await.unwrap();
        // Three wait; the sixth is refused at once.
        let mut waiters = Vec::new();
        for _ in 0..3 {
            let limit = Arc::clone(&limit);
            waiters.push(tokio::spawn(async move {
                let permit = limit.enter().await?;
                // Holds its turn past the others' deadline.
                tokio::time::sleep(Duration::from_secs(10)).await;
                drop(permit);
                Ok::<(), Busy>(())
            }));
        }
        tokio::task::yield_now().await;
        assert_eq!(limit.enter().await.err(), Some(Busy { retry_after: 3 }), "the queue is full");
        assert_eq!(limit.refused(), 1);
        // One turn frees: one waiter takes it; the other two give up at the deadline.
        drop(a);
        let mut ok = 0;
        for w in waiters {
            ok += usize::from(w.await.unwrap().is_ok());
        }
        assert_eq!(ok, 1);
        assert_eq!(limit.refused(), 3);
    }
}
