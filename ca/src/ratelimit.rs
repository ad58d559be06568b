//! Fixed-window attempt counters for the login endpoint, keyed by username and by
//! client address. In memory per replica: a limit that holds per replica still bounds
//! guessing to (replicas × limit) per window, and needs no database write per attempt.

use std::collections::HashMap;
use std::sync::Mutex;

pub struct RateLimiter {
    window: u64,
    max: u32,
    buckets: Mutex<HashMap<String, (u64, u32)>>,
}

/// Entries kept before expired windows are swept, bounding memory under a spray.
const SWEEP_AT: usize = 10_000;

impl RateLimiter {
    pub fn new(max: u32, window_secs: u64) -> Self {
        RateLimiter { window: window_secs.max(1), max, buckets: Mutex::new(HashMap::new()) }
    }

    /// Seconds to wait if `key` is over its limit now.
    pub fn blocked(&self, key: &str, now: u64) -> Option<u64> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.get(key) {
            Some(&(start, count)) if now < start + self.window && count >= self.max => Some(start + self.window - now),
            _ => None,
        }
    }

    /// Counts one attempt against `key`.
    pub fn hit(&self, key: &str, now: u64) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SWEEP_AT {
            let window = self.window;
            buckets.retain(|_, (start, _)| now < *start + window);
        }
        let entry = buckets.entry(key.to_owned()).or_insert((now, 0));
        if now >= entry.0 + self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    pub fn reset(&self, key: &str) {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn reset_clears() {
        let rl = RateLimiter::new(1, 60);
        rl.hit("a", 0);
        assert!(rl.blocked("a", 1).is_some());
        rl.reset("a");
        assert!(rl.blocked("a", 1).is_none());
    }

    #[test]
    fn sweep_bounds_memory() {
        let rl = RateLimiter::new(1, 10);
        for i in 0..(SWEEP_AT + 5) {
            rl.hit(&format!("k{i}"), 0);
        }
        rl.hit("late", 100);
        assert!(rl.buckets.lock().map(|b| b.len()).unwrap_or(0) < SWEEP_AT);
    }
}
