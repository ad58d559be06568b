//! Hardware discovery: the bastion's claim and report (bastion bearer), and the
//! inventory's admin view.

use super::extract::{Authed, BastionAuth, Body, Name};
use crate::error::CaError;
use crate::service::Ca;
use axum::Json;
use axum::extract::State;
use portcullis_policies::Permission;
use portcullis_proto::discovery::*;
use std::sync::Arc;

type Ca_ = State<Arc<Ca>>;
type Res<T> = Result<Json<T>, CaError>;

#[utoipa::path(post, path = "/v1/bastion/discovery/claim", tag = "services", request_body = DiscoveryClaimRequest, security(("service" = [])), responses((status = 200, body = DiscoveryClaimResponse)))]
pub async fn claim(
    State(ca): Ca_,
    BastionAuth(b): BastionAuth,
    Body(r): Body<DiscoveryClaimRequest>,
) -> Res<DiscoveryClaimResponse> {
    Ok(Json(ca.claim_discovery(&b, &r).await?))
}

/// The route has its own body limit ([`MAX_DISCOVERY_REPORT_BODY`]): the output is up to
/// 1 MiB.
#[utoipa::path(post, path = "/v1/bastion/discovery/report", tag = "services", request_body = DiscoveryReportRequest, security(("service" = [])), responses((status = 200, body = DiscoveryReportResponse)))]
pub async fn report(
    State(ca): Ca_,
    BastionAuth(b): BastionAuth,
    Body(r): Body<DiscoveryReportRequest>,
) -> Res<DiscoveryReportResponse> {
    Ok(Json(ca.report_discovery(&b, &r).await?))
}

/// Readable with `nodes.manage` or `audit.read`.
#[utoipa::path(get, path = "/v1/admin/inventory/{node}", tag = "admin", params(("node" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = InventoryView)))]
pub async fn show(State(ca): Ca_, Authed(c): Authed, Name(node): Name) -> Res<InventoryView> {
    let grant = ca.authorize(&c, Permission::NodesManage).or_else(|_| ca.authorize(&c, Permission::AuditRead))?;
    Ok(Json(ca.inventory_view(&grant, &node).await?))
}
