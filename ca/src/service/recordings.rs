//! Session recordings, opt-in per rule (`record = true`).
//!
//! Guarantees:
//! - A session is recorded only when the rule that admitted it says so; the recording's
//!   row is written in the admission's transaction, so a recorded session never runs
//!   without one, and jump mode under such a rule is refused (it cannot be recorded).
//! - Only the bastion that holds the session adds to its recording, in order, up to the
//!   rule's size limit; anything else is refused and audited.
//! - Chunks are sealed at rest, each recording under its own key ([`RecordingSeal`]): a
//!   copy of the database without the CA passphrase holds no terminal text.
//! - Listing needs `recordings.read`; every playback or export is audited with who.
//! - Recordings older than the retention period are deleted by the housekeeping timer.

use super::core::Core;
use super::services::ServiceCaller;
use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::sealed::{ChunkFormat, OpenedChunk, RecordingMaster, RecordingSeal};
use crate::store::{self, Appended, ChunkAppend, LeaseRow, RecordingRow, Store, StoredChunk};
use portcullis_policies::{Grant, Recording, proof};
use portcullis_proto::asciicast::{MalformedEvents, check_events};
use portcullis_proto::frames::{CastWriter, check_frames};
use portcullis_proto::recording::{MAX_CHUNK_TEXT, MAX_TERMINAL_SIDE, RecordingChunkMeta, RecordingInfo};
use std::sync::Arc;
use std::time::Duration;

/// How long recordings are kept unless configured (`recording_retention`).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most recordings one listing returns.
const LIST_LIMIT: u32 = 500;
/// What a recording may exceed its limit by: the bastion stops at the limit, counting
/// what its frames hold, so only the last event's tail can go over.
const LIMIT_SLACK: u64 = 64 * 1024;
/// The recordings service. Its own state: the retention period and the master key
/// (derived on first use, once per process).
pub struct Recordings {
    core: Arc<Core>,
    retention: Duration,
    master: tokio::sync::OnceCell<Arc<RecordingMaster>>,
}

/// The error a bastion gets for a chunk refused with the audited `reason`.
fn refusal_error(reason: &'static str) -> CaError {
    match reason {
        "not_recorded" => CaError::NotFound("recorded session"),
        "not_your_session" => CaError::Forbidden("this session is held by another bastion"),
        "over_limit" => CaError::TooLarge,
        "recording_ended" => CaError::Conflict("this recording has ended".into()),
        "out_of_order" => CaError::Conflict("recording chunks come in order, from 0".into()),
        "input_not_recorded" => CaError::BadRequest("this session's rule does not record input".into()),
        _ => CaError::BadRequest("malformed recording chunk".into()),
    }
}

/// A chunk's events, checked: whether any is input, and what the chunk counts against
/// the rule's limit. Frames carry their own lengths, so what they hold (terminal bytes
/// and sizes) must be what the bastion declares; event lines from bastions older than
/// frames are checked line by line and count as the text they are, whatever the bastion
/// declares (it cannot be checked: resize lines and escapes would otherwise be free).
fn checked_events(format: ChunkFormat, events: &[u8], declared_bytes: u64) -> Result<(bool, u64), MalformedEvents> {
    match format {
        ChunkFormat::Frames => {
            let summary = check_frames(events)?;
            if summary.bytes != declared_bytes {
                return Err(MalformedEvents);
            }
            Ok((summary.input, summary.bytes))
        }
        ChunkFormat::EventLines => {
            // Chunks are joined as they are at playback: each must end its last line.
            if !events.is_empty() && !events.ends_with(b"\n") {
                return Err(MalformedEvents);
            }
            let input = std::str::from_utf8(events).map_err(|_| MalformedEvents).and_then(check_events)?;
            Ok((input, events.len() as u64))
        }
    }
}

/// A recording being played: its asciicast text a sealed chunk at a time, so what
/// playback holds is one chunk's text (at most a few tens of MiB however the terminal
/// bytes escape), not the recording's (up to a GiB of frames, many times that as text).
pub struct Playback {
    store: Store,
    session_id: String,
    seal: RecordingSeal,
    header: Option<String>,
    chunks: std::vec::IntoIter<StoredChunk>,
    /// One writer for the whole recording: a character split between chunks is whole.
    writer: CastWriter,
}

impl Playback {
    /// The next piece of the file: the header, then each chunk's events; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<String>, CaError> {
        if let Some(header) = self.header.take() {
            return Ok(Some(header));
        }
        let Some(chunk) = self.chunks.next() else { return Ok(None) };
        let sealed = self.store.recording_chunk(&self.session_id, chunk).await?;
        Ok(Some(match self.seal.open(&self.session_id, chunk.seq, &sealed)? {
            OpenedChunk::Lines(lines) => lines,
            OpenedChunk::Frames(frames) => {
                let mut text = String::new();
                self.writer.push_chunk(&mut text, &frames).map_err(|MalformedEvents| {
                    CaError::Internal(format!("recording {}: a stored chunk does not hold frames", self.session_id))
                })?;
                text
            }
        }))
    }

    /// The whole file at once (small recordings, tests).
    pub async fn text(mut self) -> Result<String, CaError> {
        let mut all = String::new();
        while let Some(piece) = self.next().await? {
            all.push_str(&piece);
        }
        Ok(all)
    }
}

fn info(row: RecordingRow) -> RecordingInfo {
    RecordingInfo {
        session_id: row.session_id,
        user: row.username,
        device: row.device,
        login: row.login,
        mode: row.mode,
        rule: row.rule,
        started_at: row.started_at,
        ended_at: row.ended_at,
        bytes: row.bytes,
        input_recorded: row.input_recorded,
        truncated: row.truncated,
        incomplete: row.incomplete,
    }
}

impl Recordings {
    pub(super) fn new(core: Arc<Core>, retention: Duration) -> Recordings {
        Recordings { core, retention, master: tokio::sync::OnceCell::new() }
    }

    /// The recording row written when `lease`'s session is admitted under a recorded rule.
    pub(super) fn new_row(&self, lease: &LeaseRow, recording: Recording) -> RecordingRow {
        RecordingRow {
            session_id: lease.session_id.clone(),
            bastion: lease.bastion.clone(),
            username: lease.username.clone(),
            device: lease.device.clone(),
            login: lease.login.clone(),
            mode: lease.mode.clone(),
            rule: lease.rule.clone(),
            started_at: lease.opened_at,
            ended_at: None,
            salt: RecordingSeal::new_salt(),
            input_recorded: recording.input(),
            max_bytes: recording.max_bytes(),
            bytes: 0,
            chunks: 0,
            truncated: false,
            size: None,
            incomplete: false,
        }
    }

    /// The recording's sealing key, from the master key (argon2id once per process, off
    /// the async threads; the deployment's salt is in the database).
    async fn seal(&self, row: &RecordingRow) -> Result<RecordingSeal, CaError> {
        let master = (self.master)
            .get_or_try_init(|| async {
                let salt = self.core.store.recording_key_salt(&RecordingSeal::new_salt()).await?;
                let passphrase = self.core.passphrase.clone();
                let master = tokio::task::spawn_blocking(move || RecordingSeal::master(&passphrase, &salt))
                    .await
                    .map_err(|_| CaError::Internal("recording key derivation".into()))??;
                Ok::<_, CaError>(Arc::new(master))
            })
            .await?;
        RecordingSeal::new(master, &row.salt, &row.session_id)
    }

    /// `POST /v1/bastion/recordings/{session_id}`: the next chunk of a recording.
    pub async fn append(
        &self,
        bastion: &ServiceCaller,
        session_id: &str,
        chunk: RecordingChunkMeta,
        format: ChunkFormat,
        events: bytes::Bytes,
    ) -> Result<(), CaError> {
        if !super::sessions::valid_session_id(session_id) {
            return Err(CaError::BadRequest("malformed session id".into()));
        }
        let row = self.core.store.recording(session_id).await?;
        let limit = |row: &RecordingRow| row.max_bytes.saturating_add(LIMIT_SLACK);
        let checked = match &row {
            None => Err("not_recorded"),
            Some(row) if row.bastion != bastion.name => Err("not_your_session"),
            Some(row) if chunk.seq < row.chunks => return Ok(()), // a retry of a stored chunk
            Some(row) if row.ended_at.is_some() => Err("recording_ended"),
            Some(row) if chunk.seq > row.chunks => Err("out_of_order"),
            Some(_) if events.len() > MAX_CHUNK_TEXT => Err("malformed"),
            Some(_) if chunk.size().is_some_and(|s| !s.is_valid()) => Err("malformed"),
            Some(row) => match checked_events(format, &events, chunk.bytes) {
                Err(MalformedEvents) => Err("malformed"),
                Ok((true, _)) if !row.input_recorded => Err("input_not_recorded"),
                Ok((_, counted)) if row.bytes.saturating_add(counted) > limit(row) => Err("over_limit"),
                Ok((_, counted)) => Ok((row, counted)),
            },
        };
        let (row, counted) = match checked {
            Ok(checked) => checked,
            Err(reason) => return Err(self.refuse(bastion, session_id, reason).await?),
        };
        let seal = self.seal(row).await?;
        let sealed = seal.seal(session_id, chunk.seq, format, &events)?;
        drop(events);
        let sealed = self.core.store.place_recording_chunk(session_id, chunk.seq, sealed).await?;
        let now = self.core.now();
        let append = ChunkAppend {
            session_id,
            seq: chunk.seq,
            sealed: &sealed,
            bytes: counted,
            limit: limit(row),
            size: chunk.size().map(|s| (s.cols, s.rows)),
            truncated: chunk.truncated,
            ended_at: chunk.last.then_some(now),
        };
        // The checks above read the row outside this transaction: the append itself takes
        // the chunk only if the recording is still where they found it (this chunk next,
        // not ended, within the limit), so a close or another request in between wins.
        let mut tx = self.core.store.begin().await?;
        match store::append_recording_chunk(tx.conn(), &append).await? {
            Appended::Stored => {}
            Appended::Retry => return Ok(()),
            Appended::Refused(reason) => {
                drop(tx);
                return Err(self.refuse(bastion, session_id, reason).await?);
            }
        }
        if chunk.truncated && !row.truncated {
            let event = AuditEvent::RecordingTruncated {
                session_id: session_id.to_owned(),
                user: row.username.clone(),
                device: row.device.clone(),
                bytes: row.bytes.saturating_add(counted),
            };
            audit::record(tx.conn(), now, &event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Audits a refused chunk and returns the error the bastion gets.
    async fn refuse(
        &self,
        bastion: &ServiceCaller,
        session_id: &str,
        reason: &'static str,
    ) -> Result<CaError, CaError> {
        let event =
            AuditEvent::RecordingRefused { bastion: bastion.name.clone(), session_id: session_id.to_owned(), reason };
        let mut tx = self.core.store.begin().await?;
        audit::record(tx.conn(), self.core.now(), &event).await?;
        tx.commit().await?;
        Ok(refusal_error(reason))
    }

    /// `GET /v1/admin/recordings`: newest first, optionally of one user or device; of
    /// the devices the grant covers (a role's targets scope its `recordings.read`).
    pub async fn list(
        &self,
        grant: &Grant<proof::RecordingsRead>,
        user: Option<&str>,
        device: Option<&str>,
    ) -> Result<Vec<RecordingInfo>, CaError> {
        let rows = self.core.store.recordings(user, device, LIST_LIMIT).await?;
        let shown = self.core.covered(grant, rows, |row| (row.device.as_str(), row.started_at)).await?;
        Ok(shown.into_iter().map(info).collect())
    }

    /// `GET /v1/admin/recordings/{session_id}`: the recording as an asciicast v2 file
    /// (header, then every event), opened from its sealed chunks one at a time as the
    /// [`Playback`] is read. Audited before the first byte.
    pub async fn cast(
        &self,
        grant: &Grant<proof::RecordingsRead>,
        session_id: &str,
    ) -> Result<(RecordingInfo, Playback), CaError> {
        let not_found = || CaError::NotFound("recording");
        let row = self.core.store.recording(session_id).await?.ok_or_else(not_found)?;
        // Another device's recording, for a role whose targets do not match it, is not
        // found alike.
        if !self.core.covers(grant, &row.device, row.started_at).await? {
            return Err(not_found());
        }
        let seal = self.seal(&row).await?;
        // Every chunk the row counts, numbered from 0: a recording missing one (a store
        // changed behind the CA's back) is not played as if it were whole.
        let chunks = self.core.store.recording_chunk_index(session_id).await?;
        if chunks.len() as u64 != row.chunks || chunks.iter().zip(0..).any(|(c, seq)| c.seq != seq) {
            return Err(CaError::Internal(format!("recording {session_id}: chunks are missing from the store")));
        }
        // Clamped as the bastion clamps: a row kept from before sizes were checked.
        let side = |n: u32| n.clamp(1, MAX_TERMINAL_SIDE);
        let (cols, rows) = row.size.map_or((80, 24), |(c, r)| (side(c), side(r)));
        let title = match &row.login {
            Some(login) => format!("{} as {login} on {}", row.username, row.device),
            None => format!("{} on {}", row.username, row.device),
        };
        let header = serde_json::json!({
            "version": 2, "width": cols, "height": rows, "timestamp": row.started_at, "title": title,
        });
        let event = AuditEvent::RecordingPlayed {
            actor: grant.username().to_owned(),
            session_id: row.session_id.clone(),
            user: row.username.clone(),
            device: row.device.clone(),
        };
        let mut tx = self.core.store.begin().await?;
        audit::record(tx.conn(), self.core.now(), &event).await?;
        tx.commit().await?;
        let playback = Playback {
            store: self.core.store.clone(),
            session_id: row.session_id.clone(),
            seal,
            header: Some(format!("{header}\n")),
            chunks: chunks.into_iter(),
            writer: CastWriter::default(),
        };
        Ok((info(row), playback))
    }

    /// Deletes the recordings older than the retention period (the housekeeping timer):
    /// their rows, then their chunk files.
    pub(super) async fn expire(&self) -> Result<(), CaError> {
        let now = self.core.now();
        let retention = self.retention.as_secs();
        let mut tx = self.core.store.begin().await?;
        let count = store::delete_recordings_before(tx.conn(), now.saturating_sub(retention)).await?;
        if count > 0 {
            let event = AuditEvent::RecordingsExpired { count, retention_secs: retention };
            audit::record(tx.conn(), now, &event).await?;
        }
        tx.commit().await?;
        self.core.store.remove_unlisted_chunk_files().await?;
        Ok(())
    }
}
