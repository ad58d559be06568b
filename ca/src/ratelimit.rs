//! Attempt counters for the sign-in endpoints. In memory per replica: a limit that holds
//! per replica still bounds guessing to (replicas × limit) per window, and needs no
//! database write per attempt.
//!
//! [`RateLimiter`] is a plain fixed window (attempts per client address, console tickets
//! per user). [`LoginThrottle`] slows password guessing without handing an attacker a
//! lockout of the real user: failures count per (user, source address), with an
//! exponential back-off after a few free tries, and a per-user ceiling over all sources
//! that, once reached, blocks only the sources that have failed for that user — a
//! sign-in from an address that has not failed is never blocked by other addresses'
//! failures.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// What attempts from `client_ip` are counted under: an IPv4 address as it is (and an
/// IPv4-mapped IPv6 address as its IPv4 address), an IPv6 address by its /64 — one host
/// is routinely given a whole /64, and counting per address would hand it 2^64 fresh
/// budgets. Text that is not an address is its own key.
pub fn source_key(client_ip: &str) -> String {
    match client_ip.parse::<IpAddr>() {
        Ok(ip) => match source_prefix(ip) {
            IpAddr::V6(prefix) => format!("{prefix}/64"),
            v4 => v4.to_string(),
        },
        Err(_) => client_ip.to_owned(),
    }
}

pub use portcullis_proto::source_prefix;

pub struct RateLimiter {
    window: u64,
    max: u32,
    buckets: Mutex<Swept<String, (u64, u32)>>,
}

/// Entries kept before expired ones are first swept out, bounding memory under a spray.
const SWEEP_AT: usize = 10_000;

/// A map of at least [`SWEEP_AT`] entries whose expired ones are swept out once it has
/// doubled since the last sweep or a window has passed since it. A sweep is a full scan,
/// so it must not run on every insert while the map is full of live entries — 65,536
/// IPv6 /64s of one /48 each trying once a minute kept it over the old fixed threshold,
/// and every sign-in then scanned them all under the lock. This way sweeping costs O(1)
/// per insert, and what is kept is at most about twice a window's entries.
struct Swept<K, V> {
    map: HashMap<K, V>,
    sweep_at: usize,
    swept: u64,
}

impl<K: std::hash::Hash + Eq, V> Swept<K, V> {
    fn new() -> Self {
        Swept { map: HashMap::new(), sweep_at: SWEEP_AT, swept: 0 }
    }

    /// Sweeps with `live` if the map is due (see the type's doc); `window`: how long an
    /// entry can stay live.
    fn maybe_sweep(&mut self, now: u64, window: u64, live: impl FnMut(&K, &mut V) -> bool) {
        let len = self.map.len();
        if len >= self.sweep_at || (len >= SWEEP_AT && now >= self.swept.saturating_add(window)) {
            self.map.retain(live);
            self.sweep_at = (self.map.len() * 2).max(SWEEP_AT);
            self.swept = now;
        }
    }
}

impl RateLimiter {
    pub fn new(max: u32, window_secs: u64) -> Self {
        RateLimiter { window: window_secs.max(1), max, buckets: Mutex::new(Swept::new()) }
    }

    /// Seconds to wait if `key` is over its limit now.
    pub fn blocked(&self, key: &str, now: u64) -> Option<u64> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.map.get(key) {
            Some(&(start, count)) if now < start + self.window && count >= self.max => Some(start + self.window - now),
            _ => None,
        }
    }

    /// Counts one attempt against `key`.
    pub fn hit(&self, key: &str, now: u64) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.window;
        buckets.maybe_sweep(now, window, |_, (start, _)| now < *start + window);
        let entry = buckets.map.entry(key.to_owned()).or_insert((now, 0));
        if now >= entry.0 + self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// Failures one (user, address) pair gets before its back-off starts: typos are free.
pub const FREE_FAILURES: u32 = 5;
/// The longest back-off one pair waits between guesses.
pub const MAX_BACKOFF_SECS: u64 = 15 * 60;

#[derive(Debug, Clone, Copy)]
struct PairState {
    failures: u32,
    last_failure: u64,
}

impl PairState {
    /// When this pair may try again: 1 s after the first failure past the free ones,
    /// doubling with each further failure up to [`MAX_BACKOFF_SECS`].
    fn blocked_until(self) -> Option<u64> {
        let over = self.failures.checked_sub(FREE_FAILURES + 1)?;
        let backoff = 1u64.checked_shl(over).unwrap_or(u64::MAX).min(MAX_BACKOFF_SECS);
        Some(self.last_failure.saturating_add(backoff))
    }
}

/// Password guessing control for one replica; see the module doc.
pub struct LoginThrottle {
    pairs: Mutex<Swept<(String, String), PairState>>,
    /// Failures per user over all addresses, in windows of `ceiling_window` seconds.
    per_user: RateLimiter,
    ceiling_window: u64,
}

impl LoginThrottle {
    /// `ceiling`: failures per user per `window` seconds over all addresses before
    /// addresses that failed for that user are held off for the rest of the window.
    pub fn new(ceiling: u32, window: u64) -> Self {
        LoginThrottle {
            pairs: Mutex::new(Swept::new()),
            per_user: RateLimiter::new(ceiling, window),
            ceiling_window: window,
        }
    }

    /// Seconds `address` must wait before trying `user` again, if any.
    pub fn blocked(&self, user: &str, address: &str, now: u64) -> Option<u64> {
        let pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        let pair = pairs.map.get(&(user.to_owned(), address.to_owned())).copied()?;
        if let Some(until) = pair.blocked_until()
            && now < until
        {
            return Some(until - now);
        }
        // The ceiling holds only addresses that failed for this user recently.
        if now < pair.last_failure.saturating_add(self.ceiling_window) {
            return self.per_user.blocked(user, now);
        }
        None
    }

    pub fn failed(&self, user: &str, address: &str, now: u64) {
        self.per_user.hit(user, now);
        let mut pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        let keep = MAX_BACKOFF_SECS.max(self.ceiling_window);
        pairs.maybe_sweep(now, keep, |_, p| now < p.last_failure.saturating_add(keep));
        let pair = pairs
            .map
            .entry((user.to_owned(), address.to_owned()))
            .or_insert(PairState { failures: 0, last_failure: now });
        pair.failures = pair.failures.saturating_add(1);
        pair.last_failure = now;
    }

    /// A correct password from `address` clears that pair's failures (not other
    /// addresses', and not the user's ceiling: an attacker's address stays slowed).
    pub fn succeeded(&self, user: &str, address: &str) {
        self.pairs.lock().unwrap_or_else(|e| e.into_inner()).map.remove(&(user.to_owned(), address.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_ipv4_as_itself() {
        assert_eq!(source_key("2001:db8:7:1::5"), "2001:db8:7:1::/64");
        assert_eq!(source_key("2001:db8:7:1:ffff:1:2:3"), source_key("2001:db8:7:1::1"));
        assert_ne!(source_key("2001:db8:7:1::1"), source_key("2001:db8:7:2::1"));
        assert_eq!(source_key("::ffff:198.51.100.7"), "198.51.100.7");
        assert_eq!(source_key("198.51.100.7"), "198.51.100.7");
        assert_ne!(source_key("198.51.100.7"), source_key("198.51.100.8"));
        assert_eq!(source_key("unknown"), "unknown");
    }

    #[test]
    fn failures_from_other_addresses_never_block_a_clean_address() {
        let t = LoginThrottle::new(20, 3600);
        // An attacker spreads 200 failures over 100 addresses.
        for i in 0..100 {
            for _ in 0..2 {
                t.failed("admin", &format!("198.51.100.{i}"), 1000);
            }
        }
        assert!(t.blocked("admin", "192.0.2.7", 1001).is_none(), "the real user's address is not blocked");
        // Past the ceiling, every address that failed for admin is held off.
        assert!(t.blocked("admin", "198.51.100.3", 1001).is_some());
        assert!(t.blocked("admin", "198.51.100.99", 1001).is_some());
        // Other users are untouched.
        assert!(t.blocked("alice", "198.51.100.3", 1001).is_none());
    }

    #[test]
    fn one_address_backs_off_exponentially_after_the_free_failures() {
        let t = LoginThrottle::new(1000, 3600);
        for _ in 0..FREE_FAILURES {
            assert!(t.blocked("alice", "a", 100).is_none());
            t.failed("alice", "a", 100);
        }
        assert!(t.blocked("alice", "a", 100).is_none(), "typos are free");
        t.failed("alice", "a", 100);
        assert_eq!(t.blocked("alice", "a", 100), Some(1));
        let mut waits = Vec::new();
        let mut now = 200;
        for _ in 0..14 {
            t.failed("alice", "a", now);
            let wait = t.blocked("alice", "a", now).unwrap();
            waits.push(wait);
            now += wait;
            assert!(t.blocked("alice", "a", now).is_none(), "the back-off ends");
        }
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert_eq!(waits.first(), Some(&2));
        assert_eq!(waits.last(), Some(&MAX_BACKOFF_SECS), "capped: {waits:?}");
        t.succeeded("alice", "a");
        assert!(t.blocked("alice", "a", now).is_none());
    }

    #[test]
    fn a_property_no_address_without_failures_is_ever_blocked() {
        // Deterministic pseudo-random schedules of failures from many addresses.
        let mut next = crate::test_rng::xorshift();
        for _ in 0..50 {
            let t = LoginThrottle::new(u32::try_from(next() % 50).unwrap_or(1) + 1, 60 + next() % 3600);
            let mut now = 1_000_000;
            for _ in 0..(next() % 2000) {
                now += next() % 5;
                t.failed("admin", &format!("10.0.{}.{}", next() % 4, next() % 250), now);
            }
            assert!(t.blocked("admin", "192.0.2.1", now).is_none());
            assert!(t.blocked("admin", "10.1.0.1", now + next() % 10_000).is_none());
        }
    }

    #[test]
    fn blocks_after_max_until_window_ends() {
        let rl = RateLimiter::new(3, 60);
        for _ in 0..3 {
            assert!(rl.blocked("alice", 100).is_none());
            rl.hit("alice", 100);
        }
        assert_eq!(rl.blocked("alice", 110), Some(50));
        assert!(rl.blocked("bob", 110).is_none());
        assert!(rl.blocked("alice", 160).is_none());
        rl.hit("alice", 160);
        assert!(rl.blocked("alice", 161).is_none());
    }

    #[test]
    fn sweep_bounds_memory() {
        let rl = RateLimiter::new(1, 10);
        for i in 0..(SWEEP_AT + 5) {
            rl.hit(&format!("k{i}"), 0);
        }
        rl.hit("late", 100);
        assert!(rl.buckets.lock().map(|b| b.map.len()).unwrap_or(0) < SWEEP_AT);
    }

    /// A spray of live keys (every /64 of a /48 trying within one window) costs each
    /// attempt O(1), not a scan of every key: 200,000 distinct keys in one window took
    /// minutes when every insert past 10,000 swept the whole map, and take well under a
    /// second now. Expired keys still go at the next sweep.
    #[test]
    fn a_spray_of_live_keys_costs_each_attempt_no_full_scan() {
        let limiter = RateLimiter::new(30, 60);
        let started = std::time::Instant::now();
        for i in 0..200_000u32 {
            limiter.hit(&format!("2001:db8:{:x}:{:x}::/64", i >> 16, i & 0xffff), 1000);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
        assert!(limiter.blocked("2001:db8:0:7::/64", 1000).is_none());
        // A window later, the next attempt sweeps the spray out.
        limiter.hit("later", 1060);
        assert_eq!(limiter.buckets.lock().unwrap().map.len(), 1);
    }
}
