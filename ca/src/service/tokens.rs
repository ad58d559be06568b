//! Enrollment tokens: made by a `nodes.manage` grant (and `ca.manage` for a bastion's or
//! an agent's), listed and ended within the grant's reach. A token keeps its creator's
//! reach for the node it enrolls (`enroll`).

use super::caller::{random_token, token_hash};
use super::nodes::Nodes;
use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::store::{self, EnrollTokenRow};
use portcullis_policies::{Grant, proof};
use portcullis_proto::bastion::ServiceKind;
use portcullis_proto::enroll::{EnrollTokenInfo, EnrollTokenRequest, EnrollTokenResponse};
use portcullis_sshcert::random_bytes;

impl Nodes {
    /// A token for a bastion or agent (`request.service`) also needs `infrastructure`:
    /// whoever can enroll one is handed what the CA gives such services — the Proxmox
    /// VE API tokens and discovery keys for its agents — so `nodes.manage` alone must
    /// not be enough (it would read every secret `secrets.manage` may only set).
    pub async fn create_enroll_token(
        &self,
        grant: &Grant<proof::NodesManage>,
        infrastructure: Option<&Grant<proof::CaManage>>,
        request: &EnrollTokenRequest,
    ) -> Result<EnrollTokenResponse, CaError> {
        if request.service.is_some() && infrastructure.is_none() {
            return Err(CaError::Forbidden("enrolling a bastion or an agent needs the ca.manage permission"));
        }
        if request.uses == 0 || request.uses > 10_000 {
            return Err(CaError::BadRequest("uses must be between 1 and 10000".into()));
        }
        if request.ttl_seconds == 0 || request.ttl_seconds > 30 * 24 * 3600 {
            return Err(CaError::BadRequest("ttl must be between 1 s and 30 days".into()));
        }
        if request.service.is_some()
            && (!request.tags.is_empty()
                || request.partition.is_some()
                || request.agent.is_some()
                || request.node.is_some())
        {
            return Err(CaError::BadRequest("service tokens take no tags, partition, agent or node".into()));
        }
        if let Some(node) = &request.node {
            crate::validate::node_name(node)?;
        }
        // A token keeps its creator's reach; the node it enrolls is checked against it
        // then (see `enroll`). A role with targets enrolls only nodes registered already,
        // each with a token bound to its name: where a node is reached is set by an
        // administrator of every node (see `nodes::ROUTE_NEEDS_EVERY_NODE`), and
        // enrolling keeps it.
        let reach = grant.targets().map(|queries| queries.iter().map(ToString::to_string).collect());
        if request.service.is_none() && !grant.covers_everything() {
            let Some(name) = &request.node else {
                return Err(CaError::Forbidden(
                    "with a role that has targets, a token enrolls one registered node: name it (--node NAME)",
                ));
            };
            if request.agent.is_some() || request.partition.is_some() {
                return Err(CaError::Forbidden(super::nodes::ROUTE_NEEDS_EVERY_NODE));
            }
            let node = self.managed_node(grant, name).await?;
            if node.addresses.is_empty() {
                return Err(CaError::Forbidden(
                    "the node has no registered addresses; an administrator of every node sets them first",
                ));
            }
        }
        let now = self.core.now();
        let token = random_token("pce_");
        let row = EnrollTokenRow {
            id: hex::encode(random_bytes::<8>()),
            created_by: grant.username().to_owned(),
            expires_at: now.saturating_add(request.ttl_seconds),
            uses_left: request.uses,
            tags: request.tags.clone(),
            partition: request.partition.clone(),
            agent: request.agent.clone(),
            service_kind: request.service.map(|k| k.as_str().to_owned()),
            node: request.node.clone(),
            reach: if request.service.is_some() { None } else { reach },
        };
        let mut tx = self.core.store.begin().await?;
        store::insert_enroll_token(tx.conn(), &token_hash(&token), &row, now).await?;
        audit::record(
            tx.conn(),
            now,
            &AuditEvent::EnrollTokenCreated {
                actor: grant.username().to_owned(),
                id: row.id.clone(),
                uses: row.uses_left,
                expires_at: row.expires_at,
                tags: row.tags.clone(),
                service: request.service.map(ServiceKind::as_str),
                node: request.node.clone(),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(EnrollTokenResponse { token: token.into(), id: row.id, expires_at: row.expires_at, uses: row.uses_left })
    }

    /// The tokens `grant` may see and revoke: all of them when it holds everywhere, else
    /// those that enroll only where it manages nodes (each of the token's queries is one
    /// of the grant's), so one lab administrator sees another's, not the prod team's.
    async fn visible_tokens(&self, grant: &Grant<proof::NodesManage>) -> Result<Vec<EnrollTokenRow>, CaError> {
        let mut tokens = self.core.store.enroll_tokens().await?;
        if let Some(targets) = grant.targets() {
            let own: Vec<String> = targets.iter().map(ToString::to_string).collect();
            tokens.retain(|t| t.reach.as_ref().is_some_and(|reach| reach.iter().all(|q| own.contains(q))));
        }
        Ok(tokens)
    }

    pub async fn enroll_tokens(&self, grant: &Grant<proof::NodesManage>) -> Result<Vec<EnrollTokenInfo>, CaError> {
        Ok(self
            .visible_tokens(grant)
            .await?
            .into_iter()
            .map(|t| EnrollTokenInfo {
                id: t.id,
                created_by: t.created_by,
                expires_at: t.expires_at,
                uses_left: t.uses_left,
                tags: t.tags,
                partition: t.partition,
                agent: t.agent,
                service: match t.service_kind.as_deref() {
                    Some("agent") => Some(ServiceKind::Agent),
                    Some("bastion") => Some(ServiceKind::Bastion),
                    _ => None,
                },
                node: t.node,
            })
            .collect())
    }

    /// Ends a token before its time: it admits no further enrollment.
    pub async fn revoke_enroll_token(&self, grant: &Grant<proof::NodesManage>, id: &str) -> Result<(), CaError> {
        if !grant.covers_everything() && !self.visible_tokens(grant).await?.iter().any(|t| t.id == id) {
            return Err(CaError::NotFound("enrollment token"));
        }
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        if !store::revoke_enroll_token(tx.conn(), id).await? {
            return Err(CaError::NotFound("enrollment token"));
        }
        let event = AuditEvent::EnrollTokenRevoked { actor: grant.username().to_owned(), id: id.to_owned() };
        audit::record(tx.conn(), now, &event).await?;
        tx.commit().await?;
        Ok(())
    }
}
