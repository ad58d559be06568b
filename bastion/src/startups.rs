//! Limits on connections that have not authenticated yet, like sshd's `MaxStartups`
//! (`start:rate:full`) and `PerSourceMaxStartups`.
//!
//! Every unauthenticated connection costs a task, a socket and a key exchange (the DHEat
//! attack is nothing but many of them). A connection holds a slot from `accept()` until
//! it authenticates or ends; beyond `per_source` slots for one address, or `full` in
//! total, a new connection is closed at once, and between `start` and `full` it is
//! closed with a probability rising from `rate_percent` to 100 %. A refusal is cheap: no
//! banner, no task, no CA call, no audit row; refusals are counted and summarized in the
//! log at most every 10 s.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// See the module doc. `start <= full`; `full` is a hard cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupLimits {
    pub per_source: usize,
    pub start: usize,
    pub rate_percent: u8,
    pub full: usize,
}

impl Default for StartupLimits {
    /// sshd's defaults are 10:30:100 and no per-source cap; a bastion is the one door
    /// for many users, so it starts dropping later and caps each address.
    fn default() -> Self {
        Self { per_source: 16, start: 64, rate_percent: 30, full: 256 }
    }
}

const REPORT_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    /// Refusals since the last log line, and when that was.
    unreported: u64,
    reported_at: Option<Instant>,
}

/// The unauthenticated connections of one listener.
#[derive(Debug)]
pub(crate) struct Startups {
    limits: StartupLimits,
    counts: Mutex<Counts>,
    refused: AtomicU64,
}

/// One unauthenticated connection's place; released on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    owner: Arc<Startups>,
    ip: IpAddr,
}

impl Startups {
    pub(crate) fn new(limits: StartupLimits) -> Arc<Self> {
        Arc::new(Self { limits, counts: Mutex::default(), refused: AtomicU64::new(0) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for a new connection from `ip`, or `None`: close it now. An IPv6 peer is
    /// counted by its /64 ([`portcullis_proto::source_prefix`]), or one host could
    /// take every slot.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, listener: &str) -> Option<Slot> {
        let ip = portcullis_proto::source_prefix(ip);
        let roll = u32::from(portcullis_sshcert::random_bytes::<1>()[0]) * 100 / 256;
        let mut c = self.lock();
        let from_source = c.by_source.get(&ip).copied().unwrap_or(0);
        if from_source >= self.limits.per_source || drop_at(&self.limits, c.total, roll) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            c.unreported += 1;
            let now = Instant::now();
            if c.reported_at.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY) {
                tracing::warn!(
                    listener,
                    refused = c.unreported,
                    unauthenticated = c.total,
                    "refused connections over the unauthenticated-connection limits"
                );
                c.reported_at = Some(now);
                c.unreported = 0;
            }
            return None;
        }
        c.total += 1;
        *c.by_source.entry(ip).or_default() += 1;
        Some(Slot { owner: Arc::clone(self), ip })
    }

    /// Connections refused since start (a metric).
    #[allow(dead_code)] // read by tests and, later, a metrics endpoint
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// sshd's random early drop: never below `start`, always at `full`, in between with a
/// probability rising linearly from `rate_percent`. `roll` is uniform in 0..100.
fn drop_at(limits: &StartupLimits, total: usize, roll: u32) -> bool {
    if total >= limits.full {
        return true;
    }
    if total < limits.start {
        return false;
    }
    let rate = u64::from(limits.rate_percent.min(100));
    let span = (limits.full - limits.start).max(1) as u64;
    let p = rate + (100 - rate) * (total - limits.start) as u64 / span;
    u64::from(roll) < p
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.owner.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_source.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn per_source_and_total_caps_release_on_drop() {
        let s = Startups::new(StartupLimits { per_source: 2, start: 3, rate_percent: 100, full: 3 });
        let a1 = s.admit(ip(1), "t").unwrap();
        let _a2 = s.admit(ip(1), "t").unwrap();
        assert!(s.admit(ip(1), "t").is_none(), "third from one address");
        let _b1 = s.admit(ip(2), "t").unwrap();
        assert!(s.admit(ip(3), "t").is_none(), "full");
        drop(a1);
        assert!(s.admit(ip(1), "t").is_some(), "a released slot is free again");
        assert_eq!(s.refused(), 2);
        assert!(s.lock().by_source.len() <= 2);
    }

    #[test]
    fn an_ipv6_host_gets_one_share_per_64() {
        let s = Startups::new(StartupLimits { per_source: 2, start: 100, rate_percent: 100, full: 100 });
        let addr = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        let _held: Vec<Slot> = (1..=2).map(|n| s.admit(addr(n), "t").unwrap()).collect();
        assert!(s.admit(addr(3), "t").is_none(), "a third address of the same /64");
        assert!(s.admit(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]), "t").is_some(), "another /64");
    }

    #[test]
    fn random_early_drop_rises_from_rate_to_full() {
        let l = StartupLimits { per_source: 1000, start: 10, rate_percent: 30, full: 100 };
        assert!(!drop_at(&l, 9, 0), "below start: never");
        assert!(drop_at(&l, 10, 29) && !drop_at(&l, 10, 30), "at start: rate %");
        assert!(drop_at(&l, 55, 64) && !drop_at(&l, 55, 65), "half way: 65 %");
        assert!(drop_at(&l, 100, 99), "full: always");
    }
}
