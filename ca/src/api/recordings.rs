//! Session recordings: the bastion hands them over chunk by chunk; holders of
//! `recordings.read` list, play back and export them (each playback audited).

use super::extract::{Authed, BastionAuth, Name, Query, RawBody};
use crate::error::CaError;
use crate::sealed::ChunkFormat;
use crate::service::Ca;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_policies::proof;
use portcullis_proto::recording::{
    ASCIICAST_MEDIA_TYPE, RECORDING_EVENTS_MEDIA_TYPE, RECORDING_FRAMES_MEDIA_TYPE, RecordingChunkMeta, RecordingInfo,
};
use serde::Deserialize;
use std::sync::Arc;

type Ca_ = State<Arc<Ca>>;

#[utoipa::path(post, path = "/v1/bastion/recordings/{id}", tag = "services", params(("id" = String, Path), RecordingChunkMeta), request_body(content = Vec<u8>, content_type = "application/vnd.portcullis.recording-frames", description = "frames (portcullis_proto::frames), or asciicast v2 event lines as application/x-asciicast-events"), security(("service" = [])), responses((status = 204, description = "stored")))]
pub async fn append(
    State(ca): Ca_,
    BastionAuth(b): BastionAuth,
    Name(id): Name,
    Query(chunk): Query<RecordingChunkMeta>,
    body: RawBody,
) -> Result<StatusCode, CaError> {
    let format = match body.media_type.as_deref() {
        Some(RECORDING_FRAMES_MEDIA_TYPE) => ChunkFormat::Frames,
        Some(RECORDING_EVENTS_MEDIA_TYPE) => ChunkFormat::EventLines,
        _ => {
            return Err(CaError::BadRequest(format!(
                "expected Content-Type: {RECORDING_FRAMES_MEDIA_TYPE} (or {RECORDING_EVENTS_MEDIA_TYPE})"
            )));
        }
    };
    ca.recordings().append(&b, &id, chunk, format, body.bytes).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `user`, `device`: only this user's or device's recordings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingsQuery {
    user: Option<String>,
    device: Option<String>,
}

#[utoipa::path(get, path = "/v1/admin/recordings", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<RecordingInfo>)))]
pub async fn list(
    State(ca): Ca_,
    Authed(c): Authed,
    Query(q): Query<RecordingsQuery>,
) -> Result<Json<Vec<RecordingInfo>>, CaError> {
    let grant = ca.core().authorize::<proof::RecordingsRead>(&c)?;
    Ok(Json(ca.recordings().list(&grant, q.user.as_deref(), q.device.as_deref()).await?))
}

/// The recording as an asciicast v2 file, offered for download under its session id.
#[utoipa::path(get, path = "/v1/admin/recordings/{id}", tag = "admin", params(("id" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "asciicast v2")))]
pub async fn get(State(ca): Ca_, Authed(c): Authed, Name(id): Name) -> Result<Response, CaError> {
    let grant = ca.core().authorize::<proof::RecordingsRead>(&c)?;
    let (info, playback) = ca.recordings().cast(&grant, &id).await?;
    // Streamed a chunk at a time; an error midway ends the body early (the status has
    // gone out), which a client sees as a cut download, not as a whole file.
    let pieces = futures_util::stream::try_unfold(playback, |mut playback| async move {
        Ok::<_, CaError>(playback.next().await?.map(|piece| (bytes::Bytes::from(piece), playback)))
    });
    let mut response = axum::body::Body::from_stream(pieces).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ASCIICAST_MEDIA_TYPE));
    // The session id is 32 hex digits (checked by the store lookup above).
    let disposition = format!("attachment; filename=\"{}.cast\"", info.session_id);
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::try_from(disposition).map_err(|_| CaError::Internal("header value".into()))?,
    );
    Ok(response)
}
