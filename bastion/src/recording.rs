//! Session recording, when the rule that admitted a session says `record = true`.
//!
//! The relay hands the recorder each chunk of terminal output (and of input when the
//! rule records it) as the `Bytes` it forwards anyway — a reference count, no copy —
//! stamped with the time since the session started. A task of its own copies them into
//! frames ([`portcullis_proto::frames`]: the bytes as they are, not yet text — the CA
//! turns them into asciicast v2 when the recording is played) and hands them to the CA in
//! numbered chunks, about once a second or at nearly 2 MiB, the last one marked. The relay
//! never waits for the CA: it waits only when a full queue of events is not yet copied.
//!
//! At the rule's size limit the recording stops (and says so in its last chunk); a rule
//! with `record_over_limit = "close"` closes the session then, and also when the CA
//! cannot take the recording.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use portcullis_proto::bastion::CloseReason;
use portcullis_proto::frames::{FRAME_HEADER, push_frame};
use portcullis_proto::recording::{
    MAX_CHUNK_TEXT, MAX_TERMINAL_SIDE, RecordingChunkMeta, RecordingGrant, TerminalSize,
};
use tokio::sync::mpsc;

use crate::control::{ControlError, ControlPlane};
use crate::sessions::LiveSession;

/// What a user is told when the session starts.
pub(crate) const ANNOUNCEMENT: &str = "portcullis: this session is recorded";
/// Events waiting to be copied into frames; the relay waits when the queue is full.
const QUEUE: usize = 1024;
/// Terminal bytes per frame at most: a larger piece of output is recorded as several
/// frames (slices of the same buffer), so one more frame always fits in a chunk.
const MAX_FRAME_DATA: usize = 64 * 1024;
/// A chunk goes to the CA when its frames reach this, or after [`FLUSH_EVERY`]: as large
/// as the CA takes with one more frame. Each chunk is a request, a file and a transaction
/// at the CA, so larger chunks cost less per byte.
const FLUSH_BYTES: usize = MAX_CHUNK_TEXT - (FRAME_HEADER + MAX_FRAME_DATA);
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long the end of a session waits for the last chunk to reach the CA.
const FINISH_WAIT: Duration = Duration::from_secs(10);
/// Tries per chunk while the CA cannot be reached (its replicas are tried each time).
const ATTEMPTS: u32 = 4;

/// Times are microseconds since the session started.
enum Event {
    Output(u64, Bytes),
    Input(u64, Bytes),
    /// `COLSxROWS`, each within 1..=[`MAX_TERMINAL_SIDE`].
    Resize(u64, Bytes),
    /// The limit was reached: nothing after this is recorded.
    Truncated,
}

pub(crate) struct Recorder {
    started: Instant,
    grant: RecordingGrant,
    /// What the frames hold so far (terminal bytes and sizes): what counts against the
    /// rule's limit, as the CA counts it.
    recorded: AtomicU64,
    full: AtomicBool,
    /// The last size recorded (`cols << 32 | rows`): the same size again is no event.
    last_size: AtomicU64,
    events: mpsc::Sender<Event>,
    uploader: tokio::task::JoinHandle<()>,
    live: Arc<LiveSession>,
}

impl Recorder {
    /// Starts recording `live`'s session for the CA, when `grant` says so.
    pub(crate) fn start(
        control: &Arc<ControlPlane>,
        live: &Arc<LiveSession>,
        grant: Option<RecordingGrant>,
    ) -> Option<Recorder> {
        let grant = grant?;
        let (events, queue) = mpsc::channel(QUEUE);
        let uploader =
            Uploader { control: Arc::clone(control), live: Arc::clone(live), close_on_failure: grant.close_at_limit };
        Some(Recorder {
            started: Instant::now(),
            grant,
            recorded: AtomicU64::new(0),
            full: AtomicBool::new(false),
            last_size: AtomicU64::new(0),
            events,
            uploader: tokio::spawn(Arc::new(uploader).run(queue)),
            live: Arc::clone(live),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Terminal output on its way to the user.
    pub(crate) async fn output(&self, data: &Bytes) {
        self.record(data, Event::Output, true).await;
    }

    /// The user's keystrokes, when the rule records input.
    pub(crate) async fn input(&self, data: &Bytes) {
        if self.grant.input {
            self.record(data, Event::Input, true).await;
        }
    }

    /// The terminal's size (a client without a terminal of its own says 0×0: not a size).
    /// A client may claim any size: what is recorded is kept within what a player can
    /// draw (and the CA accepts), and a size repeated is not recorded again — sizes count
    /// against the limit like output, so a client sending them by the thousand fills the
    /// recording, not the disk.
    pub(crate) async fn resize(&self, cols: u32, rows: u32) {
        if cols == 0 || rows == 0 {
            return;
        }
        let (cols, rows) = (cols.min(MAX_TERMINAL_SIDE), rows.min(MAX_TERMINAL_SIDE));
        let packed = u64::from(cols) << 32 | u64::from(rows);
        if self.last_size.swap(packed, Ordering::Relaxed) != packed {
            self.record(&Bytes::from(format!("{cols}x{rows}")), Event::Resize, false).await;
        }
    }

    /// Records `data` as far as the limit allows: cut there when `divisible` (output and
    /// input), else whole or not at all (a size).
    async fn record(&self, data: &Bytes, event: fn(u64, Bytes) -> Event, divisible: bool) {
        if data.is_empty() || self.full.load(Ordering::Relaxed) {
            return;
        }
        let len = data.len() as u64;
        let before = self.recorded.fetch_add(len, Ordering::Relaxed);
        let room = self.grant.max_bytes.saturating_sub(before);
        if room >= len || (room > 0 && divisible) {
            let kept = data.slice(..usize::try_from(room.min(len)).unwrap_or(data.len()));
            let now = self.now();
            for piece in pieces(&kept) {
                let _ = self.events.send(event(now, piece)).await;
            }
        }
        if before.saturating_add(len) > self.grant.max_bytes && !self.full.swap(true, Ordering::Relaxed) {
            let _ = self.events.send(Event::Truncated).await;
            if self.grant.close_at_limit {
                self.live.order_close(CloseReason::RecordingLimit);
            }
        }
    }

    /// The session ended: the rest goes to the CA as the last chunk (waited for, briefly).
    pub(crate) async fn finish(self) {
        drop(self.events);
        if tokio::time::timeout(FINISH_WAIT, self.uploader).await.is_err() {
            tracing::warn!(session = %self.live.id, "the recording's last chunk did not reach the CA in time");
        }
    }
}

/// `data` in slices of at most [`MAX_FRAME_DATA`] bytes (no copy).
fn pieces(data: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    (0..data.len()).step_by(MAX_FRAME_DATA).map(|at| data.slice(at..data.len().min(at + MAX_FRAME_DATA)))
}

/// The size a resize event's `COLSxROWS` (as [`Recorder::resize`] writes it) names.
fn parse_size(text: &[u8]) -> Option<TerminalSize> {
    let (cols, rows) = std::str::from_utf8(text).ok()?.split_once('x')?;
    Some(TerminalSize { cols: cols.parse().ok()?, rows: rows.parse().ok()? })
}

struct Uploader {
    control: Arc<ControlPlane>,
    live: Arc<LiveSession>,
    close_on_failure: bool,
}

/// The next chunk being filled.
#[derive(Default)]
struct Pending {
    frames: Vec<u8>,
    bytes: u64,
    size: Option<TerminalSize>,
    truncated: bool,
    sized: bool,
}

impl Pending {
    fn add(&mut self, micros: u64, code: u8, data: &[u8]) {
        self.bytes += data.len() as u64;
        push_frame(&mut self.frames, micros, code, data);
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.size.is_none() && !self.truncated
    }
}

impl Uploader {
    async fn run(self: Arc<Self>, mut queue: mpsc::Receiver<Event>) {
        let mut in_flight: Option<tokio::task::JoinHandle<bool>> = None;
        let mut pending = Pending::default();
        let mut seq = 0;
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                event = queue.recv() => match event {
                    Some(event) => {
                        match event {
                            Event::Output(t, data) => pending.add(t, b'o', &data),
                            Event::Input(t, data) => pending.add(t, b'i', &data),
                            Event::Resize(t, size) => {
                                // The first size is the header's; later ones are events.
                                if !pending.sized {
                                    pending.sized = true;
                                    pending.size = parse_size(&size);
                                }
                                pending.add(t, b'r', &size);
                            }
                            Event::Truncated => pending.truncated = true,
                        }
                        if pending.frames.len() < FLUSH_BYTES {
                            continue;
                        }
                        false
                    }
                    None => true,
                },
                _ = tick.tick() => {
                    if pending.is_empty() {
                        continue;
                    }
                    false
                }
            };
            let size = pending.size.take();
            let chunk = RecordingChunkMeta {
                seq,
                bytes: std::mem::take(&mut pending.bytes),
                cols: size.map(|s| s.cols),
                rows: size.map(|s| s.rows),
                truncated: std::mem::take(&mut pending.truncated),
                last,
            };
            // The frames become the request body as they are (no copy). The next chunk
            // starts with room for a little more than this one held: a bulk transfer fills
            // its megabyte without growing the buffer step by step, an idle session keeps
            // little.
            let next = Vec::with_capacity(pending.frames.len() + pending.frames.len() / 4);
            let events = Bytes::from(std::mem::replace(&mut pending.frames, next));
            // One chunk on its way while the next fills: the CA's write overlaps the
            // copying into frames, and chunks still arrive in order.
            if let Some(previous) = in_flight.take()
                && !previous.await.unwrap_or(false)
            {
                return;
            }
            if last {
                self.hand_over(&chunk, events).await;
                return;
            }
            let this = Arc::clone(&self);
            in_flight = Some(tokio::spawn(async move { this.hand_over(&chunk, events).await }));
            seq += 1;
        }
    }

    /// Sends a chunk, trying again while the CA cannot be reached; `false` when it never
    /// took it (then the recording ends here, and the session too if the rule says so).
    async fn hand_over(&self, chunk: &RecordingChunkMeta, events: Bytes) -> bool {
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            match self.control.recording_chunk(&self.live.id, chunk, events.clone()).await {
                Ok(()) => return true,
                Err(e @ ControlError::Refused { .. }) => {
                    tracing::warn!(session = %self.live.id, error = %e, "the CA refused a recording chunk");
                    break;
                }
                Err(e) if attempt == ATTEMPTS => {
                    tracing::warn!(session = %self.live.id, error = %e, "a recording chunk could not reach the CA");
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
        if self.close_on_failure {
            self.live.order_close(CloseReason::RecordingFailed);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_with_one_more_frame_is_still_one_the_ca_takes() {
        // The uploader sends once its frames reach FLUSH_BYTES, so a chunk is at most
        // FLUSH_BYTES - 1 and one more frame.
        let mut frames = vec![0; FLUSH_BYTES - 1];
        let output = Bytes::from(vec![b'x'; 3 * MAX_FRAME_DATA + 5]);
        let cut: Vec<Bytes> = pieces(&output).collect();
        assert_eq!(cut.iter().map(Bytes::len).collect::<Vec<_>>(), [MAX_FRAME_DATA, MAX_FRAME_DATA, MAX_FRAME_DATA, 5]);
        assert_eq!(cut.concat(), output);
        push_frame(&mut frames, 1, b'o', &cut[0]);
        assert!(frames.len() <= MAX_CHUNK_TEXT, "{} > {MAX_CHUNK_TEXT}", frames.len());
        assert_eq!(pieces(&Bytes::new()).count(), 0);
    }
}
