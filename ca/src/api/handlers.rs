//! One function per route; each authenticates, authorizes, and calls one method of one CA service.

use super::extract::{Authed, Body, ClientIp};
use super::extract::{Name, Path, Query};
use crate::error::CaError;
use crate::keys::KeyPurpose;
use crate::service::Ca;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use portcullis_policies::{UserSource, proof};
use portcullis_proto::*;
use secrecy::SecretString;
use serde::Deserialize;
use std::sync::Arc;

type Ca_ = State<Arc<Ca>>;
type Res<T> = Result<Json<T>, CaError>;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    username: String,
    #[schema(value_type = String)]
    password: SecretString,
    /// Ask only this source (`local`, `ldap`): how a directory user whose bare name a
    /// local user shadows signs in. `ldap:NAME` as the user name does the same.
    #[serde(default)]
    source: Option<String>,
    /// Replaces a local user's password at this sign-in (required when the current one
    /// is a one-time password).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    new_password: Option<SecretString>,
}

impl LoginBody {
    /// Signs in, replacing the password when the body names a new one.
    pub(super) async fn sign_in(&self, ca: &Ca, ip: &str) -> Result<LoginResponse, CaError> {
        let source = self.source()?;
        match &self.new_password {
            None => ca.identity().login_password(&self.username, source, &self.password, ip).await,
            Some(new) => ca.identity().login_replacing_password(&self.username, source, &self.password, new, ip).await,
        }
    }

    /// The source asked for, if any; an unknown one is a bad request.
    fn source(&self) -> Result<Option<UserSource>, CaError> {
        match self.source.as_deref().filter(|s| !s.is_empty() && *s != "any") {
            None => Ok(None),
            Some(s) => match UserSource::parse(s) {
                Some(UserSource::Oidc) => Err(CaError::BadRequest("OIDC users sign in through single sign-on".into())),
                Some(source) => Ok(Some(source)),
                None => Err(CaError::BadRequest("`source` must be `local` or `ldap`".into())),
            },
        }
    }
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginBody, responses((status = 200, body = LoginResponse)))]
pub async fn login(State(ca): Ca_, ClientIp(ip): ClientIp, Body(body): Body<LoginBody>) -> Res<LoginResponse> {
    // The user name is checked (printable, bounded) before anything is asked or audited.
    Ok(Json(body.sign_in(&ca, &ip).await?))
}

/// Revokes the session, whether it came as a bearer token or as the browser's cookie,
/// and tells a browser to drop the cookie.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "see the description")))]
pub async fn logout(State(ca): Ca_, Authed(caller): Authed) -> Result<impl IntoResponse, CaError> {
    ca.identity().logout(&caller).await?;
    Ok([super::oidc::clear_session_cookie()])
}

#[utoipa::path(get, path = "/v1/auth/whoami", tag = "auth", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = WhoAmI)))]
pub async fn whoami(State(ca): Ca_, Authed(caller): Authed) -> Res<WhoAmI> {
    Ok(Json(ca.identity().whoami(&caller)))
}

#[utoipa::path(post, path = "/v1/certs/user/revoke", tag = "certificates", request_body = RevokeOwnRequest, security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = RevokeResponse)))]
pub async fn revoke_own_cert(
    State(ca): Ca_,
    Authed(caller): Authed,
    Body(request): Body<RevokeOwnRequest>,
) -> Res<RevokeResponse> {
    Ok(Json(ca.revocation().revoke_own(&caller, &request).await?))
}

#[utoipa::path(post, path = "/v1/certs/user", tag = "certificates", request_body = UserCertRequest, security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = UserCertResponse)))]
pub async fn issue_user_cert(
    State(ca): Ca_,
    Authed(caller): Authed,
    ClientIp(ip): ClientIp,
    Body(request): Body<UserCertRequest>,
) -> Res<UserCertResponse> {
    Ok(Json(ca.issuance().issue(&caller, &request, &ip).await?))
}

/// Public: CA public keys are what nodes must trust, nothing secret.
#[utoipa::path(get, path = "/v1/ca/{purpose}/keys", tag = "certificates", params(("purpose" = String, Path)), responses((status = 200, description = "see the description")))]
pub async fn trusted_keys(State(ca): Ca_, Path(purpose): Path<String>) -> Result<impl IntoResponse, CaError> {
    let purpose: KeyPurpose = purpose.parse()?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], ca.core().trusted_keys(purpose)))
}

/// Any signed-in user: the bastions' host keys, for `portcullis ssh-config`.
#[utoipa::path(get, path = "/v1/bastions/host-keys", tag = "certificates", security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "see the description")))]
pub async fn bastion_host_keys(State(ca): Ca_, Authed(_): Authed) -> Result<impl IntoResponse, CaError> {
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], ca.services().bastion_host_keys().await?))
}

/// Public: sshd on every node fetches it; it names only serials and key hashes.
#[utoipa::path(get, path = "/v1/krl", tag = "certificates", responses((status = 200, description = "see the description")))]
pub async fn krl(State(ca): Ca_) -> Result<impl IntoResponse, CaError> {
    let bytes = ca.revocation().krl().await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes.as_ref().clone()))
}

#[utoipa::path(get, path = "/v1/nodes/{name}/principals", tag = "nodes", params(("name" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = NodePrincipals)))]
pub async fn node_principals(State(ca): Ca_, Authed(c): Authed, Name(name): Name) -> Res<NodePrincipals> {
    let grant = ca.core().authorize::<proof::NodesManage>(&c)?;
    Ok(Json(ca.nodes().node_principals(&grant, &name).await?))
}

#[utoipa::path(get, path = "/v1/admin/users", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<UserInfo>)))]
pub async fn list_users(State(ca): Ca_, Authed(c): Authed) -> Res<Vec<UserInfo>> {
    let grant = ca.core().authorize::<proof::UsersManage>(&c)?;
    Ok(Json(ca.admin().users(&grant).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddUserBody {
    username: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    password: Option<SecretString>,
}

#[utoipa::path(post, path = "/v1/admin/users", tag = "admin", request_body = AddUserBody, security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = UserInfo)))]
pub async fn add_user(State(ca): Ca_, Authed(c): Authed, Body(b): Body<AddUserBody>) -> Res<UserInfo> {
    let grant = ca.core().authorize::<proof::UsersManage>(&c)?;
    ca.admin().add_user(&grant, &b.username, &b.groups, b.password.as_ref()).await?;
    Ok(Json(UserInfo { username: b.username, groups: b.groups, disabled: false }))
}

#[utoipa::path(post, path = "/v1/admin/users/{name}/disable", tag = "admin", params(("name" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "done")))]
pub async fn disable_user(State(ca): Ca_, Authed(c): Authed, Name(name): Name) -> Result<(), CaError> {
    let grant = ca.core().authorize::<proof::UsersManage>(&c)?;
    ca.admin().set_user_disabled(&grant, &name, true).await
}

#[utoipa::path(post, path = "/v1/admin/users/{name}/release", tag = "admin", params(("name" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "done")))]
pub async fn release_account(State(ca): Ca_, Authed(c): Authed, Name(name): Name) -> Result<(), CaError> {
    let grant = ca.core().authorize::<proof::UsersManage>(&c)?;
    ca.admin().release_account(&grant, &name).await
}

#[utoipa::path(post, path = "/v1/admin/users/{name}/enable", tag = "admin", params(("name" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "done")))]
pub async fn enable_user(State(ca): Ca_, Authed(c): Authed, Name(name): Name) -> Result<(), CaError> {
    let grant = ca.core().authorize::<proof::UsersManage>(&c)?;
    ca.admin().set_user_disabled(&grant, &name, false).await
}

#[utoipa::path(put, path = "/v1/admin/users/{name}/groups", tag = "admin", params(("name" = String, Path)), request_body = SetGroupsRequest, security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "done")))]
pub async fn set_groups(
    State(ca): Ca_,
    Authed(c): Authed,
    Name(name): Name,
    Body(b): Body<SetGroupsRequest>,
) -> Result<(), CaError> {
    let grant = ca.core().authorize::<proof::UsersManage>(&c)?;
    ca.admin().set_user_groups(&grant, &name, &b.groups).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    #[schema(value_type = String)]
    password: SecretString,
    /// Opens no session until its user replaces it at their next sign-in.
    #[serde(default)]
    one_time: bool,
}

#[utoipa::path(put, path = "/v1/admin/users/{name}/password", tag = "admin", params(("name" = String, Path)), request_body = PasswordBody, security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "done")))]
pub async fn set_password(
    State(ca): Ca_,
    Authed(c): Authed,
    Name(name): Name,
    Body(b): Body<PasswordBody>,
) -> Result<(), CaError> {
    let grant = ca.core().authorize::<proof::UsersManage>(&c)?;
    ca.admin().set_user_password(&grant, &name, &b.password, b.one_time).await
}

#[utoipa::path(post, path = "/v1/admin/revoke", tag = "admin", request_body = RevokeRequest, security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = RevokeResponse)))]
pub async fn revoke(State(ca): Ca_, Authed(c): Authed, Body(b): Body<RevokeRequest>) -> Res<RevokeResponse> {
    let grant = ca.core().authorize::<proof::CertsRevoke>(&c)?;
    Ok(Json(ca.revocation().revoke(&grant, &b).await?))
}

#[derive(Deserialize)]
pub struct CertsQuery {
    user: Option<String>,
    /// The newest this many (default 500, at most 10,000).
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/admin/certs", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<IssuedCert>)))]
pub async fn list_certs(State(ca): Ca_, Authed(c): Authed, Query(q): Query<CertsQuery>) -> Res<Vec<IssuedCert>> {
    let grant = ca.core().authorize::<proof::CertsRevoke>(&c)?;
    Ok(Json(ca.issuance().certificates(&grant, q.user.as_deref(), q.limit).await?))
}

#[utoipa::path(get, path = "/v1/admin/ca/keys", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<CaKeyInfo>)))]
pub async fn list_ca_keys(State(ca): Ca_, Authed(c): Authed) -> Res<Vec<CaKeyInfo>> {
    ca.core().authorize::<proof::CaManage>(&c)?;
    Ok(Json(ca.admin().ca_keys()))
}

#[utoipa::path(post, path = "/v1/admin/ca/{purpose}/rotate", tag = "admin", params(("purpose" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = CaKeyInfo)))]
pub async fn rotate_ca_key(State(ca): Ca_, Authed(c): Authed, Path(purpose): Path<String>) -> Res<CaKeyInfo> {
    let grant = ca.core().authorize::<proof::CaManage>(&c)?;
    Ok(Json(ca.admin().rotate_ca_key(&grant, purpose.parse()?).await?))
}

#[utoipa::path(post, path = "/v1/admin/ca/{purpose}/activate", tag = "admin", params(("purpose" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "done")))]
pub async fn activate_ca_key(State(ca): Ca_, Authed(c): Authed, Path(purpose): Path<String>) -> Result<(), CaError> {
    let grant = ca.core().authorize::<proof::CaManage>(&c)?;
    ca.admin().activate_ca_key(&grant, purpose.parse()?).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetireBody {
    fingerprint: String,
}

#[utoipa::path(post, path = "/v1/admin/ca/retire", tag = "admin", request_body = RetireBody, security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "done")))]
pub async fn retire_ca_key(State(ca): Ca_, Authed(c): Authed, Body(b): Body<RetireBody>) -> Result<(), CaError> {
    let grant = ca.core().authorize::<proof::CaManage>(&c)?;
    ca.admin().retire_ca_key(&grant, &b.fingerprint).await
}

#[utoipa::path(get, path = "/v1/admin/nodes", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<NodeRecord>)))]
pub async fn list_nodes(State(ca): Ca_, Authed(c): Authed) -> Res<Vec<NodeRecord>> {
    let grant = ca.core().authorize::<proof::NodesManage>(&c)?;
    Ok(Json(ca.nodes().list(&grant).await?))
}

#[utoipa::path(post, path = "/v1/admin/nodes", tag = "admin", request_body = NodeRecord, security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = NodeRecord)))]
pub async fn add_node(State(ca): Ca_, Authed(c): Authed, Body(node): Body<NodeRecord>) -> Res<NodeRecord> {
    let grant = ca.core().authorize::<proof::NodesManage>(&c)?;
    ca.nodes().add_node(&grant, &node).await?;
    Ok(Json(node))
}

#[utoipa::path(put, path = "/v1/admin/nodes/{name}", tag = "admin", params(("name" = String, Path)), request_body = NodeUpdate, security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = NodeRecord)))]
pub async fn update_node(
    State(ca): Ca_,
    Authed(c): Authed,
    Name(name): Name,
    Body(update): Body<NodeUpdate>,
) -> Res<NodeRecord> {
    let grant = ca.core().authorize::<proof::NodesManage>(&c)?;
    Ok(Json(ca.nodes().update_node(&grant, &name, &update).await?))
}

#[utoipa::path(delete, path = "/v1/admin/nodes/{name}", tag = "admin", params(("name" = String, Path)), security(("bearer" = []), ("cookie" = [])), responses((status = 200, description = "done")))]
pub async fn remove_node(State(ca): Ca_, Authed(c): Authed, Name(name): Name) -> Result<(), CaError> {
    let grant = ca.core().authorize::<proof::NodesManage>(&c)?;
    ca.nodes().remove_node(&grant, &name).await
}

#[utoipa::path(post, path = "/v1/admin/policy/reload", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = PolicyReloadResponse)))]
pub async fn reload_policy(State(ca): Ca_, Authed(c): Authed) -> Res<PolicyReloadResponse> {
    let grant = ca.core().authorize::<proof::PolicyManage>(&c)?;
    Ok(Json(ca.admin().reload_policy(&grant).await?))
}

/// `GET /v1/admin/audit`: `after`/`limit` as before (oldest first); filters `event`,
/// `user` (the record's user, username or actor), `device` (device or node), `since`
/// (unix seconds); `order=desc` pages newest first from `before` (exclusive).
#[derive(Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: u32,
    event: Option<String>,
    user: Option<String>,
    device: Option<String>,
    since: Option<u64>,
    /// Unix seconds; records before it (with `since`, a time range).
    until: Option<u64>,
    before: Option<u64>,
    order: Option<String>,
}

fn default_limit() -> u32 {
    100
}

#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = Vec<AuditRecord>)))]
pub async fn audit_records(State(ca): Ca_, Authed(c): Authed, Query(q): Query<AuditQuery>) -> Res<Vec<AuditRecord>> {
    let grant = ca.core().authorize::<proof::AuditRead>(&c)?;
    let newest_first = match q.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(CaError::BadRequest("order is asc or desc".into())),
    };
    let filter = crate::service::AuditFilter {
        after: q.after,
        before: q.before,
        newest_first,
        event: q.event,
        user: q.user,
        device: q.device,
        since: q.since.unwrap_or(0),
        until: q.until,
        limit: q.limit,
    };
    Ok(Json(ca.admin().audit_search(&grant, &filter).await?))
}

#[utoipa::path(get, path = "/v1/admin/audit/verify", tag = "admin", security(("bearer" = []), ("cookie" = [])), responses((status = 200, body = AuditVerifyResponse)))]
pub async fn audit_verify(State(ca): Ca_, Authed(c): Authed) -> Res<AuditVerifyResponse> {
    let grant = ca.core().authorize::<proof::AuditRead>(&c)?;
    Ok(Json(ca.admin().audit_verify(&grant).await?))
}
