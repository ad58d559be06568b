//! Routes of the data plane (bastions, agents) and the administration of their sessions.
//! Services authenticate with their own bearer credential (`pcs_…`, from enrollment);
//! an endpoint for the other kind of service answers 403.

use super::extract::{AgentAuth, Authed, BastionAuth, Body, ClientIp, Name, ServiceAuth, bearer};
use crate::error::CaError;
use crate::service::Ca;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use portcullis_policies::proof;
use portcullis_proto::SessionInfo;
use portcullis_proto::bastion::*;
use std::sync::Arc;

type Ca_ = State<Arc<Ca>>;
type Res<T> = Result<Json<T>, CaError>;

/// The enrollment token (`pce_…`, minted for this kind of service) is the credential.
#[utoipa::path(post, path = "/v1/services/enroll", operation_id = "service_enroll", tag = "services", request_body = ServiceEnrollRequest, responses((status = 200, body = ServiceEnrollResponse)))]
pub async fn enroll(
    State(ca): Ca_,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Body(b): Body<ServiceEnrollRequest>,
) -> Res<ServiceEnrollResponse> {
    let token = bearer(&headers, "pce_").ok_or(CaError::Unauthenticated)?;
    Ok(Json(ca.services().enroll_service(token, &b, &ip).await?))
}

#[utoipa::path(post, path = "/v1/services/certificate", tag = "services", security(("service" = [])), responses((status = 200, body = ServiceCertificateResponse)))]
pub async fn certificate(State(ca): Ca_, ServiceAuth(s): ServiceAuth) -> Res<ServiceCertificateResponse> {
    Ok(Json(ca.services().renew_service_certificate(&s).await?))
}

#[utoipa::path(get, path = "/v1/services/bastions", tag = "services", security(("service" = [])), responses((status = 200, body = Vec<BastionDirectoryEntry>)))]
pub async fn bastions(State(ca): Ca_, ServiceAuth(_): ServiceAuth) -> Res<Vec<BastionDirectoryEntry>> {
    Ok(Json(ca.services().bastion_directory().await?))
}

#[utoipa::path(get, path = "/v1/services/agent/targets", tag = "services", security(("service" = [])), responses((status = 200, body = Vec<AgentTarget>)))]
pub async fn agent_targets(State(ca): Ca_, AgentAuth(a): AgentAuth) -> Res<Vec<AgentTarget>> {
    Ok(Json(ca.services().agent_targets(&a).await?))
}

#[utoipa::path(post, path = "/v1/bastion/sessions/open", operation_id = "bastion_session_open", tag = "services", request_body = SessionOpenRequest, security(("service" = [])), responses((status = 200, body = SessionGrant)))]
pub async fn open(State(ca): Ca_, BastionAuth(b): BastionAuth, Body(r): Body<SessionOpenRequest>) -> Res<SessionGrant> {
    Ok(Json(ca.sessions().open_bastion_session(&b, &r).await?))
}

#[utoipa::path(post, path = "/v1/bastion/heartbeat", tag = "services", request_body = HeartbeatRequest, security(("service" = [])), responses((status = 200, body = HeartbeatResponse)))]
pub async fn heartbeat(
    State(ca): Ca_,
    BastionAuth(b): BastionAuth,
    Body(r): Body<HeartbeatRequest>,
) -> Res<HeartbeatResponse> {
    Ok(Json(ca.sessions().heartbeat(&b, &r).await?))
}

#[utoipa::path(post, path = "/v1/bastion/sessions/close", tag = "services", request_body = SessionCloseRequest, security(("service" = [])), responses((status = 204, description = "done")))]
pub async fn close(
    State(ca): Ca_,
    BastionAuth(b): BastionAuth,
    Body(r): Body<SessionCloseRequest>,
) -> Result<StatusCode, CaError> {
    ca.sessions().close_session(&b, &r).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/bastion/sessions/closes", tag = "services", request_body = SessionClosesRequest, security(("service" = [])), responses((status = 204, description = "done")))]
pub async fn closes(
    State(ca): Ca_,
    BastionAuth(b): BastionAuth,
    Body(r): Body<SessionClosesRequest>,
) -> Result<StatusCode, CaError> {
    ca.sessions().close_sessions(&b, &r.closes).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/bastion/events", tag = "services", request_body = BastionEventsRequest, security(("service" = [])), responses((status = 204, description = "done")))]
pub async fn events(
    State(ca): Ca_,
    BastionAuth(b): BastionAuth,
    Body(r): Body<BastionEventsRequest>,
) -> Result<StatusCode, CaError> {
    ca.sessions().bastion_events(&b, &r).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Readable with `audit.read` or `sessions.kill`.
#[utoipa::path(get, path = "/v1/admin/sessions", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<SessionInfo>)))]
pub async fn list_sessions(State(ca): Ca_, Authed(c): Authed) -> Res<Vec<SessionInfo>> {
    let grant = ca.core().authorize::<proof::SessionsRead>(&c)?;
    Ok(Json(ca.sessions().live_sessions(&grant).await?))
}

#[utoipa::path(post, path = "/v1/admin/sessions/{id}/kill", tag = "admin", params(("id" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 204, description = "done")))]
pub async fn kill_session(State(ca): Ca_, Authed(c): Authed, Name(id): Name) -> Result<StatusCode, CaError> {
    let grant = ca.core().authorize::<proof::SessionsKill>(&c)?;
    ca.sessions().kill_session(&grant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/admin/agents", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<ServiceInfo>)))]
pub async fn list_agents(State(ca): Ca_, Authed(c): Authed) -> Res<Vec<ServiceInfo>> {
    let grant = ca.core().authorize::<proof::NodesManage>(&c)?;
    Ok(Json(ca.services().service_infos(&grant, ServiceKind::Agent).await?))
}

#[utoipa::path(get, path = "/v1/admin/bastions", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<ServiceInfo>)))]
pub async fn list_bastions(State(ca): Ca_, Authed(c): Authed) -> Res<Vec<ServiceInfo>> {
    let grant = ca.core().authorize::<proof::NodesManage>(&c)?;
    Ok(Json(ca.services().service_infos(&grant, ServiceKind::Bastion).await?))
}
