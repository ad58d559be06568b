//! Session recording (opt-in per rule): what the CA tells the bastion to record, how the
//! bastion hands the recording over, and what an auditor lists.
//!
//! A recording is played and exported as asciicast v2
//! (<https://docs.asciinema.org/manual/asciicast/v2/>): events `[seconds, "o", text]` for
//! output, `"i"` for input when the rule records it, `"r"` for a resize to
//! `"COLSxROWS"`. The bastion sends the terminal's bytes in numbered chunks of frames
//! ([`crate::frames`]); the CA checks and seals each chunk at rest and writes the
//! asciicast text, header first, when the recording is read.

use serde::{Deserialize, Serialize};

/// Most bytes of one chunk's body, frames or event lines ([`RecordingChunkMeta`]; the
/// bastion sends up to this less one frame).
pub const MAX_CHUNK_TEXT: usize = 2 * 1024 * 1024;

/// In a [`crate::bastion::SessionGrant`]: this session is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RecordingGrant {
    /// Keystrokes too (they may hold passwords typed at prompts), not only output.
    pub input: bool,
    /// The most the recording keeps, counted as its frames' data: output, recorded input
    /// and the sizes' text (see [`crate::frames`]).
    pub max_bytes: u64,
    /// At `max_bytes` the session is closed (`true`) or goes on unrecorded (`false`).
    pub close_at_limit: bool,
}

/// `POST /v1/bastion/recordings/{session_id}?seq=…&bytes=…` (bearer of the bastion
/// holding the session): the next chunk of its recording. The body is the chunk's frames
/// as they are ([`RECORDING_FRAMES_MEDIA_TYPE`]; the CA also takes asciicast v2 event
/// lines, [`RECORDING_EVENTS_MEDIA_TYPE`], from bastions older than frames); this says
/// what they are. Chunks are numbered from 0; a chunk sent again (a retry) is accepted
/// once.
///
/// The events travel as the body, not inside JSON: quoting them again would cost the
/// bastion and the CA a pass over every recorded byte each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct RecordingChunkMeta {
    pub seq: u64,
    /// What these frames hold — terminal bytes and the sizes' text — which counts against
    /// `max_bytes`; the CA checks it against the frames' own lengths. (Event lines count
    /// as their text, whatever this says.)
    pub bytes: u64,
    /// The terminal's size when known (from the pty request), for the header: each side
    /// within 1..=[`MAX_TERMINAL_SIDE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u32>,
    /// The recording reached its limit: what follows was not recorded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The session ended: no chunk follows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub last: bool,
}

impl RecordingChunkMeta {
    /// The terminal's size, when both halves are given.
    pub fn size(&self) -> Option<TerminalSize> {
        Some(TerminalSize { cols: self.cols?, rows: self.rows? })
    }
}

/// The media type of a [`RecordingChunkMeta`]'s body: frames ([`crate::frames`]).
pub const RECORDING_FRAMES_MEDIA_TYPE: &str = "application/vnd.portcullis.recording-frames";

/// The media type of a [`RecordingChunkMeta`]'s body from a bastion older than frames:
/// asciicast v2 event lines, no header.
pub const RECORDING_EVENTS_MEDIA_TYPE: &str = "application/x-asciicast-events";

/// A terminal's columns or rows at most, as a recording keeps them and as the console
/// asks for them: a player draws every cell, so a size a client makes up must not become
/// billions of cells on an auditor's screen.
pub const MAX_TERMINAL_SIDE: u32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TerminalSize {
    pub cols: u32,
    pub rows: u32,
}

impl TerminalSize {
    /// Both sides within 1..=[`MAX_TERMINAL_SIDE`].
    pub fn is_valid(&self) -> bool {
        (1..=MAX_TERMINAL_SIDE).contains(&self.cols) && (1..=MAX_TERMINAL_SIDE).contains(&self.rows)
    }
}

/// `GET /v1/admin/recordings` (`recordings.read`): one recording.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordingInfo {
    pub session_id: String,
    pub user: String,
    pub device: String,
    pub login: Option<String>,
    /// `terminated` or `console`.
    pub mode: String,
    pub rule: String,
    pub started_at: u64,
    /// When the session ended (its last chunk, or its close; absent while it lives).
    pub ended_at: Option<u64>,
    pub bytes: u64,
    pub input_recorded: bool,
    pub truncated: bool,
    /// Its end never reached the CA (the bastion could not hand over its last chunk, or
    /// went away): it ends with the last chunk that came, not with the session.
    #[serde(default)]
    pub incomplete: bool,
}

/// The media type of a recording as served (`GET /v1/admin/recordings/{session_id}`).
pub const ASCIICAST_MEDIA_TYPE: &str = "application/x-asciicast";
