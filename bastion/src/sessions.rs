//! Live sessions on this bastion: the registry the heartbeat reports, the close orders
//! it receives, and the per-session watchdog that enforces idle, absolute and
//! certificate-expiry limits.
//!
//! A session is one proxied channel (a terminated-mode shell/exec/sftp, a jump-mode
//! `direct-tcpip`, a browser console). Its lease lives in the CA's database; here it is
//! a [`LiveSession`] whose `close` cell anybody may set (heartbeat answer, agent loss,
//! shutdown) and whose watchdog turns the first reason set — or the first limit hit —
//! into the end of the session.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_proto::bastion::{CloseReason, LiveSession as WireSession, SessionMode};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a relay's goodbye (the reason line or frame, the close) may wait on a peer
/// that does not read: the lease is released and the task ends regardless.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Runs a relay's goodbye for at most [`CLOSE_GRACE`].
pub async fn within_close_grace<T>(goodbye: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(CLOSE_GRACE, goodbye).await.ok()
}

/// Any limit longer than this is treated as this (a century: never, in practice).
const LONGEST_LIMIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The limits one session runs under (from the CA's grant).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// No activity for this long closes the session (input, and output unless the rule
    /// counts input only: see [`LiveSession::counting_output`]).
    pub idle: Duration,
    /// From session start, whatever the activity.
    pub absolute: Duration,
    /// Close when the user's certificate expires (`None`: do not).
    pub cert_expires_in: Option<Duration>,
}

pub struct LiveSession {
    pub id: String,
    pub username: String,
    pub device: String,
    pub agent: String,
    pub mode: SessionMode,
    started: Instant,
    /// Milliseconds after `started` of the last activity.
    last_input_ms: AtomicU64,
    /// Output towards the user is activity too (the rule's `idle_counts`).
    output_is_activity: bool,
    pub bytes_from_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
    close: watch::Sender<Option<CloseReason>>,
    /// Set by the watchdog shortly before an idle close: seconds left (see
    /// [`idle_warning_lead`]); the relay tells the user.
    idle_warning: watch::Sender<Option<u64>>,
}

/// How long before an idle close the user is warned: a minute, or a quarter of a
/// shorter idle limit.
pub fn idle_warning_lead(idle: Duration) -> Duration {
    (idle / 4).min(Duration::from_secs(60))
}

impl std::fmt::Debug for LiveSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSession").field("id", &self.id).field("device", &self.device).finish_non_exhaustive()
    }
}

impl LiveSession {
    pub fn new(id: String, username: String, device: String, agent: String, mode: SessionMode) -> Self {
        Self {
            id,
            username,
            device,
            agent,
            mode,
            started: Instant::now(),
            last_input_ms: AtomicU64::new(0),
            output_is_activity: false,
            bytes_from_client: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            close: watch::channel(None).0,
            idle_warning: watch::channel(None).0,
        }
    }

    /// Warnings of an idle close to come (seconds left), as the watchdog raises them.
    pub fn idle_warnings(&self) -> watch::Receiver<Option<u64>> {
        self.idle_warning.subscribe()
    }

    /// Whether output towards the user restarts the idle clock (the CA's grant says,
    /// from the rule's `idle_counts`; the seed: "without terminal input or output").
    pub fn counting_output(mut self, yes: bool) -> Self {
        self.output_is_activity = yes;
        self
    }

    /// The user typed or sent something: the idle clock restarts.
    pub fn client_input(&self, bytes: usize) {
        self.bytes_from_client.fetch_add(bytes as u64, Ordering::Relaxed);
        self.touch();
    }

    /// A request from the user that carries no bytes (window change, signal).
    pub fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_input_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Output towards the user: activity too, unless the rule counts input only.
    pub fn client_output(&self, bytes: usize) {
        self.bytes_to_client.fetch_add(bytes as u64, Ordering::Relaxed);
        if self.output_is_activity {
            self.touch();
        }
    }

    /// Orders the session closed; the first reason wins.
    pub fn order_close(&self, reason: CloseReason) {
        self.close.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// `started + after`, for any `after`: the policy loader bounds session limits, but a
    /// CA's grant is still a peer's answer and `Instant + Duration` panics on overflow.
    fn deadline(&self, after: Duration) -> Instant {
        self.started.checked_add(after.min(LONGEST_LIMIT)).unwrap_or(self.started)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// How long until `limits` end the session whatever the activity (`None`: beyond
    /// any useful horizon).
    pub fn ends_in(&self, limits: &Limits) -> Option<Duration> {
        let end = limits.cert_expires_in.map_or(limits.absolute, |c| c.min(limits.absolute));
        (end < LONGEST_LIMIT).then(|| end.saturating_sub(self.elapsed()))
    }

    fn wire(&self) -> WireSession {
        WireSession {
            session_id: self.id.clone(),
            bytes_from_client: self.bytes_from_client.load(Ordering::Relaxed),
            bytes_to_client: self.bytes_to_client.load(Ordering::Relaxed),
        }
    }

    /// The one way every relay (jump, terminated, console) runs: its `pump` — both copy
    /// directions, whatever the transport — raced against the watchdog. The pump may wait
    /// wherever its peers make it wait (a client that stops reading, a window that never
    /// opens, a browser socket with full buffers); the watchdog is polled regardless, so
    /// no peer can hold a session past a limit, a revocation or a kill. After it, the
    /// relay says goodbye through [`within_close_grace`].
    ///
    /// The pump is borrowed, pinned where the caller built it, so its state is stored
    /// once, in the caller's future: a future passed by value into an async fn is stored
    /// twice in that fn's state (as the argument and as the `select!` operand), and so
    /// is each future moved into an async block. For an idle session that doubling was
    /// more than half of its task's memory.
    pub async fn relay(&self, limits: Limits, pump: Pin<&mut impl Future<Output = CloseReason>>) -> CloseReason {
        tokio::select! {
            reason = self.watchdog(limits) => reason,
            reason = pump => reason,
        }
    }

    /// Resolves with the reason the session must end: a close order, or a limit. Keeps
    /// no state of its own, so it can be dropped and re-created at any time.
    pub async fn watchdog(&self, limits: Limits) -> CloseReason {
        let mut orders = self.close.subscribe();
        let absolute = self.deadline(limits.absolute);
        let expiry = limits.cert_expires_in.map(|d| self.deadline(d));
        let lead = idle_warning_lead(limits.idle);
        // The idle deadline the user was last warned about.
        let mut warned: Option<Instant> = None;
        loop {
            if let Some(reason) = *orders.borrow_and_update() {
                return reason;
            }
            let last_input = Duration::from_millis(self.last_input_ms.load(Ordering::Relaxed));
            let idle_at = self.deadline(last_input.saturating_add(limits.idle));
            let now = Instant::now();
            if now >= absolute {
                return CloseReason::AbsoluteTimeout;
            }
            if expiry.is_some_and(|e| now >= e) {
                return CloseReason::CertExpired;
            }
            if now >= idle_at {
                return CloseReason::IdleTimeout;
            }
            let warn_at = idle_at.checked_sub(lead).filter(|_| warned != Some(idle_at) && idle_at < absolute);
            if warn_at.is_some_and(|at| now >= at) {
                warned = Some(idle_at);
                self.idle_warning.send_replace(Some(idle_at.saturating_duration_since(now).as_secs().max(1)));
            }
            let warn_at = warn_at.filter(|at| now < *at);
            let wake = [Some(absolute), expiry, Some(idle_at), warn_at].into_iter().flatten().min().unwrap_or(absolute);
            tokio::select! {
                changed = orders.changed() => {
                    if changed.is_err() {
                        // The sender lives in `self`: unreachable while we borrow it.
                        std::future::pending::<()>().await;
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// Every live session of this bastion, by id.
#[derive(Debug, Default)]
pub struct Registry {
    live: Mutex<HashMap<String, Arc<LiveSession>>>,
    /// Shutting down: every session is ordered closed and no new one starts.
    draining: AtomicBool,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveSession>>> {
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn insert(&self, session: Arc<LiveSession>) {
        self.lock().insert(session.id.clone(), session);
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn get(&self, id: &str) -> Option<Arc<LiveSession>> {
        self.lock().get(id).cloned()
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// How many sessions are live, by mode.
    pub fn count_by_mode(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for s in self.lock().values() {
            *counts.entry(s.mode.as_str()).or_default() += 1;
        }
        counts
    }

    /// What the heartbeat reports.
    pub fn snapshot(&self) -> Vec<WireSession> {
        self.lock().values().map(|s| s.wire()).collect()
    }

    /// Starts the drain: every live session is ordered closed as `shutdown` (each tells
    /// its user why and reports its real duration), and [`Registry::draining`] refuses
    /// new ones.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.close_where(CloseReason::Shutdown, |_| true);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Orders every session matching `pred` closed.
    pub fn close_where(&self, reason: CloseReason, pred: impl Fn(&LiveSession) -> bool) {
        for s in self.lock().values().filter(|s| pred(s)) {
            s.order_close(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Arc<LiveSession> {
        Arc::new(LiveSession::new("s".into(), "alice".into(), "pve01".into(), "local".into(), SessionMode::Jump))
    }

    const LIMITS: Limits =
        Limits { idle: Duration::from_secs(900), absolute: Duration::from_secs(3600), cert_expires_in: None };

    /// When the session closes as idle: input at 600 s, output at 1400 s.
    async fn idle_close_after(s: Arc<LiveSession>) -> u64 {
        let start = Instant::now();
        let watch = tokio::spawn({
            let s = Arc::clone(&s);
            async move { (s.watchdog(LIMITS).await, Instant::now()) }
        });
        tokio::time::sleep(Duration::from_secs(600)).await;
        s.client_input(1);
        tokio::time::sleep(Duration::from_secs(800)).await;
        s.client_output(1_000_000);
        let (reason, at) = watch.await.unwrap();
        assert_eq!(reason, CloseReason::IdleTimeout);
        (at - start).as_secs()
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_output_unless_the_rule_counts_input_only() {
        let counting = |yes| {
            Arc::new(
                LiveSession::new("s".into(), "alice".into(), "pve01".into(), "local".into(), SessionMode::Terminated)
                    .counting_output(yes),
            )
        };
        // Output at 1400 s pushes the deadline to 2300 s...
        assert_eq!(idle_close_after(counting(true)).await, 2300);
        // ...unless only input counts: 600 s + 900 s.
        assert_eq!(idle_close_after(counting(false)).await, 1500);
    }

    #[tokio::test(start_paused = true)]
    async fn the_user_is_warned_before_an_idle_close_and_again_after_activity() {
        let s = session();
        let mut warnings = s.idle_warnings();
        let watch = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.watchdog(LIMITS).await }
        });
        // 900 s idle: warned 60 s before, at 840 s.
        tokio::time::sleep(Duration::from_secs(839)).await;
        assert!(!warnings.has_changed().unwrap());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(*warnings.borrow_and_update(), Some(60));
        // Input moves the deadline: a new warning 60 s before the new one.
        s.client_input(1);
        tokio::time::sleep(Duration::from_secs(845)).await;
        assert_eq!(*warnings.borrow_and_update(), Some(60));
        assert_eq!(watch.await.unwrap(), CloseReason::IdleTimeout);
        assert_eq!(idle_warning_lead(Duration::from_secs(2)), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn absolute_timeout_despite_activity() {
        let s = session();
        let start = Instant::now();
        let watch = tokio::spawn({
            let s = Arc::clone(&s);
            async move { (s.watchdog(LIMITS).await, start.elapsed()) }
        });
        for _ in 0..7 {
            tokio::time::sleep(Duration::from_secs(599)).await;
            s.client_input(1);
        }
        let (reason, after) = watch.await.unwrap();
        assert_eq!(reason, CloseReason::AbsoluteTimeout);
        assert_eq!(after.as_secs(), 3600);
    }

    #[tokio::test(start_paused = true)]
    async fn certificate_expiry_and_orders() {
        let s = session();
        let limits = Limits { cert_expires_in: Some(Duration::from_secs(120)), ..LIMITS };
        assert_eq!(s.watchdog(limits).await, CloseReason::CertExpired);

        let s = session();
        let watch = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.watchdog(LIMITS).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        s.order_close(CloseReason::Revoked);
        s.order_close(CloseReason::AdminTerminated);
        assert_eq!(watch.await.unwrap(), CloseReason::Revoked, "the first order wins");
    }

    #[tokio::test(start_paused = true)]
    async fn limits_beyond_any_clock_neither_panic_nor_block_orders() {
        let s = session();
        let endless = Limits { idle: Duration::MAX, absolute: Duration::MAX, cert_expires_in: Some(Duration::MAX) };
        let watch = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.watchdog(endless).await }
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        s.client_input(1);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        s.order_close(CloseReason::AdminTerminated);
        assert_eq!(watch.await.unwrap(), CloseReason::AdminTerminated);
    }

    #[test]
    fn registry_closes_by_predicate() {
        let r = Registry::default();
        let a = session();
        let b = Arc::new(LiveSession::new("t".into(), "bob".into(), "pve02".into(), "fra".into(), SessionMode::Jump));
        r.insert(Arc::clone(&a));
        r.insert(Arc::clone(&b));
        r.close_where(CloseReason::AgentDisconnect, |s| s.agent == "fra");
        assert_eq!(*a.close.borrow(), None);
        assert_eq!(*b.close.borrow(), Some(CloseReason::AgentDisconnect));
        assert_eq!(r.snapshot().len(), 2);
    }
}
