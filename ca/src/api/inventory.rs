//! Inventory: hardware discovery's and Proxmox VE collection's claim and report (bastion
//! bearer), the inventory's admin views, and the API secrets they use.

use super::extract::{Authed, BastionAuth, Body, Name};
use crate::error::CaError;
use crate::service::Ca;
use axum::Json;
use axum::extract::{Path, State};
use portcullis_policies::proof;
use portcullis_proto::discovery::*;
use portcullis_proto::preview::*;
use portcullis_proto::pve::*;
use std::sync::Arc;

type Ca_ = State<Arc<Ca>>;
type Res<T> = Result<Json<T>, CaError>;

#[utoipa::path(post, path = "/v1/bastion/discovery/claim", tag = "services", request_body = DiscoveryClaimRequest, security(("service" = [])), responses((status = 200, body = DiscoveryClaimResponse)))]
pub async fn claim(
    State(ca): Ca_,
    BastionAuth(b): BastionAuth,
    Body(r): Body<DiscoveryClaimRequest>,
) -> Res<DiscoveryClaimResponse> {
    Ok(Json(ca.discovery().claim(&b, &r).await?))
}

/// The route has its own body limit ([`MAX_DISCOVERY_REPORT_BODY`]): the output is up to
/// 1 MiB.
#[utoipa::path(post, path = "/v1/bastion/discovery/report", tag = "services", request_body = DiscoveryReportRequest, security(("service" = [])), responses((status = 200, body = DiscoveryReportResponse)))]
pub async fn report(
    State(ca): Ca_,
    BastionAuth(b): BastionAuth,
    Body(r): Body<DiscoveryReportRequest>,
) -> Res<DiscoveryReportResponse> {
    Ok(Json(ca.discovery().report(&b, &r).await?))
}

/// Readable with `nodes.manage` or `audit.read`.
#[utoipa::path(get, path = "/v1/admin/inventory/{node}", tag = "admin", params(("node" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = InventoryView)))]
pub async fn show(State(ca): Ca_, Authed(c): Authed, Name(node): Name) -> Res<InventoryView> {
    let grant = ca.core().authorize::<proof::InventoryRead>(&c)?;
    Ok(Json(ca.discovery().inventory_view(&grant, &node).await?))
}

/// Proxmox VE collection: the claim hands out grants (a token for one run) only as the
/// policy decides; the bastion names nothing but its agents.
#[utoipa::path(post, path = "/v1/bastion/pve/claim", tag = "services", request_body = PveClaimRequest, security(("service" = [])), responses((status = 200, body = PveClaimResponse)))]
pub async fn pve_claim(
    State(ca): Ca_,
    BastionAuth(b): BastionAuth,
    Body(r): Body<PveClaimRequest>,
) -> Res<PveClaimResponse> {
    Ok(Json(ca.proxmox().claim(&b, &r).await?))
}

/// The route has its own body limit ([`MAX_PVE_REPORT_BODY`]).
#[utoipa::path(post, path = "/v1/bastion/pve/report", tag = "services", request_body = PveReportRequest, security(("service" = [])), responses((status = 200, body = PveReportResponse)))]
pub async fn pve_report(
    State(ca): Ca_,
    BastionAuth(b): BastionAuth,
    Body(r): Body<PveReportRequest>,
) -> Res<PveReportResponse> {
    Ok(Json(ca.proxmox().report(&b, &r).await?))
}

/// Readable with `nodes.manage` or `audit.read`.
#[utoipa::path(get, path = "/v1/admin/inventory/clusters", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<ClusterSummary>)))]
pub async fn clusters(State(ca): Ca_, Authed(c): Authed) -> Res<Vec<ClusterSummary>> {
    let grant = ca.core().authorize::<proof::InventoryRead>(&c)?;
    Ok(Json(ca.proxmox().clusters(&grant).await?))
}

/// A cluster is known within the site (agent) that reaches it: `{agent}/{cluster}`.
#[utoipa::path(get, path = "/v1/admin/inventory/clusters/{agent}/{cluster}", tag = "admin", params(("agent" = String, Path), ("cluster" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = ClusterView)))]
pub async fn cluster(
    State(ca): Ca_,
    Authed(c): Authed,
    Path((agent, cluster)): Path<(String, String)>,
) -> Res<ClusterView> {
    let grant = ca.core().authorize::<proof::InventoryRead>(&c)?;
    Ok(Json(ca.proxmox().cluster_view(&grant, &format!("{agent}/{cluster}")).await?))
}

#[utoipa::path(get, path = "/v1/admin/secrets", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<SecretInfo>)))]
pub async fn list_secrets(State(ca): Ca_, Authed(c): Authed) -> Res<Vec<SecretInfo>> {
    let grant = ca.core().authorize::<proof::SecretsManage>(&c)?;
    Ok(Json(ca.proxmox().secrets(&grant).await?))
}

#[utoipa::path(post, path = "/v1/admin/secrets", tag = "admin", request_body = SecretAddRequest, security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = SecretInfo)))]
pub async fn add_secret(State(ca): Ca_, Authed(c): Authed, Body(r): Body<SecretAddRequest>) -> Res<SecretInfo> {
    let grant = ca.core().authorize::<proof::SecretsManage>(&c)?;
    Ok(Json(ca.proxmox().add_secret(&grant, &r).await?))
}

#[utoipa::path(put, path = "/v1/admin/secrets/{name}", tag = "admin", params(("name" = String, Path)), request_body = SecretRotateRequest, security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = SecretInfo)))]
pub async fn rotate_secret(
    State(ca): Ca_,
    Authed(c): Authed,
    Name(name): Name,
    Body(r): Body<SecretRotateRequest>,
) -> Res<SecretInfo> {
    let grant = ca.core().authorize::<proof::SecretsManage>(&c)?;
    Ok(Json(ca.proxmox().rotate_secret(&grant, &name, &r).await?))
}

#[utoipa::path(delete, path = "/v1/admin/secrets/{name}", tag = "admin", params(("name" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "done")))]
pub async fn remove_secret(State(ca): Ca_, Authed(c): Authed, Name(name): Name) -> Result<(), CaError> {
    let grant = ca.core().authorize::<proof::SecretsManage>(&c)?;
    ca.proxmox().remove_secret(&grant, &name).await
}

/// The target preview of a loaded rule (`policy.manage` or `audit.read`).
#[utoipa::path(get, path = "/v1/admin/rules/{name}/preview", tag = "admin", params(("name" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<RulePreview>)))]
pub async fn preview_rule(State(ca): Ca_, Authed(c): Authed, Name(name): Name) -> Res<Vec<RulePreview>> {
    let grant = ca.core().authorize::<proof::PolicyRead>(&c)?;
    Ok(Json(ca.admin().preview_rule(&grant, Some(&name)).await?))
}

/// The target preview of every loaded rule (`policy.manage` or `audit.read`).
#[utoipa::path(get, path = "/v1/admin/rules/preview", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<RulePreview>)))]
pub async fn preview_rules(State(ca): Ca_, Authed(c): Authed) -> Res<Vec<RulePreview>> {
    let grant = ca.core().authorize::<proof::PolicyRead>(&c)?;
    Ok(Json(ca.admin().preview_rule(&grant, None).await?))
}

/// The target preview of a policy that is not loaded; nothing is saved.
#[utoipa::path(post, path = "/v1/admin/rules/preview", tag = "admin", request_body = RulePreviewRequest, security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<RulePreview>)))]
pub async fn preview_policy(
    State(ca): Ca_,
    Authed(c): Authed,
    Body(r): Body<RulePreviewRequest>,
) -> Res<Vec<RulePreview>> {
    let grant = ca.core().authorize::<proof::PolicyRead>(&c)?;
    Ok(Json(ca.admin().preview_policy(&grant, &r).await?))
}
