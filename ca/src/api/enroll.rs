//! Enrollment routes: admin token management, the node's enroll / refresh / deregister
//! calls, and the bootstrap script with the enrollment binary.

use super::extract::{Authed, Body, ClientIp, Name};
use crate::error::CaError;
use crate::service::Ca;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Uri, header};
use axum::response::IntoResponse;
use portcullis_policies::proof;
use portcullis_proto::enroll::*;
use std::sync::Arc;

type Ca_ = State<Arc<Ca>>;

#[utoipa::path(post, path = "/v1/admin/enroll-tokens", tag = "admin", request_body = EnrollTokenRequest, security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = EnrollTokenResponse)))]
pub async fn create_token(
    State(ca): Ca_,
    Authed(c): Authed,
    Body(b): Body<EnrollTokenRequest>,
) -> Result<Json<EnrollTokenResponse>, CaError> {
    let grant = ca.core().authorize::<proof::NodesManage>(&c)?;
    // A bastion's or agent's token takes `ca.manage` as well (the service decides).
    let infrastructure = ca.core().authorize::<proof::CaManage>(&c).ok();
    Ok(Json(ca.nodes().create_enroll_token(&grant, infrastructure.as_ref(), &b).await?))
}

#[utoipa::path(get, path = "/v1/admin/enroll-tokens", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<EnrollTokenInfo>)))]
pub async fn list_tokens(State(ca): Ca_, Authed(c): Authed) -> Result<Json<Vec<EnrollTokenInfo>>, CaError> {
    let grant = ca.core().authorize::<proof::NodesManage>(&c)?;
    Ok(Json(ca.nodes().enroll_tokens(&grant).await?))
}

#[utoipa::path(delete, path = "/v1/admin/enroll-tokens/{id}", tag = "admin", params(("id" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "done")))]
pub async fn revoke_token(State(ca): Ca_, Authed(c): Authed, Name(id): Name) -> Result<(), CaError> {
    let grant = ca.core().authorize::<proof::NodesManage>(&c)?;
    ca.nodes().revoke_enroll_token(&grant, &id).await
}

/// A node that rolled its enrollment back; authenticated by its host key.
#[utoipa::path(post, path = "/v1/enroll/abort", tag = "nodes", request_body = EnrollAbortRequest, responses((status = 200, description = "done")))]
pub async fn abort(
    State(ca): Ca_,
    ClientIp(ip): ClientIp,
    Body(request): Body<EnrollAbortRequest>,
) -> Result<(), CaError> {
    ca.nodes().abort_enrollment(&request, &ip).await
}

/// The enrollment token is a bearer credential of its own kind (`pce_…`), not a session.
#[utoipa::path(post, path = "/v1/enroll", operation_id = "node_enroll", tag = "nodes", request_body = EnrollRequest, responses((status = 200, body = EnrollResponse)))]
pub async fn enroll(
    State(ca): Ca_,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Body(b): Body<EnrollRequest>,
) -> Result<Json<EnrollResponse>, CaError> {
    let token = super::extract::bearer(&headers, "pce_").ok_or(CaError::Unauthenticated)?;
    Ok(Json(ca.nodes().enroll(token, &b, &ip).await?))
}

#[utoipa::path(post, path = "/v1/nodes/refresh", tag = "nodes", request_body = NodeProof, responses((status = 200, body = NodeBundle)))]
pub async fn refresh(
    State(ca): Ca_,
    ClientIp(ip): ClientIp,
    Body(p): Body<NodeProof>,
) -> Result<Json<NodeBundle>, CaError> {
    Ok(Json(ca.nodes().node_refresh(&p, &ip).await?))
}

#[utoipa::path(post, path = "/v1/nodes/deregister", tag = "nodes", request_body = NodeProof, responses((status = 200, description = "done")))]
pub async fn deregister(State(ca): Ca_, ClientIp(ip): ClientIp, Body(p): Body<NodeProof>) -> Result<(), CaError> {
    ca.nodes().node_deregister(&p, &ip).await
}

/// `curl -fsS --pinnedpubkey … https://CA/enroll.sh | sh -s -- --token T --ca-fingerprint F`
#[utoipa::path(get, path = "/enroll.sh", tag = "nodes", responses((status = 200, description = "see the description")))]
pub async fn script(State(ca): Ca_, uri: Uri, headers: HeaderMap) -> Result<impl IntoResponse, CaError> {
    // HTTP/1.1 names the host in `Host`, HTTP/2 in the `:authority` the URI carries.
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
        .filter(|h| {
            !h.is_empty() && h.len() <= 255 && h.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        })
        .ok_or_else(|| CaError::BadRequest("missing or invalid Host header".into()))?;
    let binary = ca.nodes().enroll_binary().await?;
    let script = crate::enroll_script::render(&format!("https://{host}"), ca.nodes().tls_pin(), &binary.sha256);
    Ok(([(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")], script))
}

#[utoipa::path(get, path = "/v1/download/portcullis-enroll", tag = "nodes", responses((status = 200, description = "see the description")))]
pub async fn binary(State(ca): Ca_) -> Result<impl IntoResponse, CaError> {
    let binary = ca.nodes().enroll_binary().await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::ETAG, format!("\"{}\"", binary.sha256)),
        ],
        binary.bytes.as_ref().clone(),
    ))
}
