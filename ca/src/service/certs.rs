//! Issuing user certificates, revoking them, and publishing the KRL.

use super::writer::Stored;
use super::{Ca, Caller};
use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::keys::KeyPurpose;
use crate::signer::{new_serial, sign_user_cert};
use crate::store::{self, RevokeTarget};
use portcullis_policies::{CertRequest, Device, Grant, proof};
use portcullis_proto::{
    IssuedCert, NodePrincipals, NodeRecord, PrincipalLine, RevokeOwnRequest, RevokeRequest, RevokeResponse,
    UserCertRequest, UserCertResponse,
};
use portcullis_sshcert::{KrlBuilder, fingerprint, parse_user_public_key};
use ssh_key::PublicKey;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct CachedKrl {
    version: u64,
    built_at: u64,
    bytes: Arc<Vec<u8>>,
}

/// Every revocation ends here, inside the transaction that revoked: the KRL version moves
/// (so caches and nodes pick the change up) and the revocation is audited.
pub(super) async fn record_revocation(
    conn: &mut sqlx::AnyConnection,
    now: u64,
    actor: &str,
    target: String,
    certificates: u64,
    key: bool,
) -> Result<u64, CaError> {
    let krl_version = store::bump_krl_version(conn, now).await?;
    let event = AuditEvent::Revoked { actor: actor.to_owned(), target, certificates, key, krl_version };
    audit::record(conn, now, &event).await?;
    Ok(krl_version)
}

/// A cached KRL is rebuilt at least this often, so expired entries drop out and the
/// generation date stays fresh even without new revocations.
const KRL_MAX_AGE: u64 = 300;

impl Ca {
    pub async fn issue_user_cert(
        &self,
        caller: &Caller,
        request: &UserCertRequest,
        client_ip: &str,
    ) -> Result<UserCertResponse, CaError> {
        let started = std::time::Instant::now();
        let who = &caller.identity;
        let public_key = match parse_user_public_key(&request.public_key) {
            Ok(key) => key,
            Err(e) => {
                self.audit_cert_denied(&who.username, e.reason_code(), None, client_ip).await?;
                return Err(CaError::BadRequest(e.to_string()));
            }
        };
        let key_fingerprint = fingerprint(public_key.key_data());
        let requested = request.ttl_seconds.map(Duration::from_secs).unwrap_or(self.max_cert_ttl);
        let cert_request = CertRequest { ttl: Some(requested.min(self.max_cert_ttl)), roles: request.roles.clone() };
        let permit = match self.core.policy().issue_user_cert(who, &cert_request) {
            Ok(permit) => permit,
            Err(deny) => {
                self.audit_cert_denied(&who.username, deny.reason.code(), Some(&key_fingerprint), client_ip).await?;
                return Err(CaError::Denied(deny));
            }
        };
        let signer = self
            .core
            .keyring()
            .signer(KeyPurpose::User)
            .ok_or_else(|| CaError::Internal("no active user CA key".into()))?;
        let now = self.core.now();
        let signed = sign_user_cert(&permit, &public_key, &signer, now, self.core.clock_skew, new_serial())?;
        let principals: Vec<String> = permit.principals().iter().cloned().collect();
        let mut row = signed.row(
            &signer.fingerprint,
            who.username.clone(),
            principals.clone(),
            who.groups.iter().cloned().collect(),
            now,
        );
        // What a step-up rule asks of a session opened with it (see `sessions::admission`).
        row.authenticated_at = Some(caller.authenticated_at);
        let event = AuditEvent::CertIssued {
            username: who.username.clone(),
            serial: signed.serial.to_string(),
            key_id: signed.key_id.clone(),
            principals: principals.clone(),
            roles: permit.roles().to_vec(),
            valid_after: signed.valid_after,
            valid_before: signed.valid_before,
            key_fingerprint: signed.key_fingerprint,
            ca_fingerprint: signer.fingerprint.clone(),
            client_ip: client_ip.to_owned(),
        };
        // The writer checks the key against the revoked keys inside the storing transaction.
        let refused = AuditEvent::CertDenied {
            username: who.username.clone(),
            reason: "key_revoked",
            key_fingerprint: Some(key_fingerprint),
            client_ip: client_ip.to_owned(),
        };
        if self.writer.write(row, event, refused).await? == Stored::KeyRevoked {
            return Err(CaError::BadRequest("this public key has been revoked; generate a new key".into()));
        }
        self.core.counters.certificates_issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.core.counters.issuance.observe(started.elapsed());
        Ok(UserCertResponse {
            certificate: signed
                .certificate
                .to_openssh()
                .map_err(|_| CaError::Internal("certificate encoding".into()))?,
            serial: signed.serial.to_string(),
            key_id: signed.key_id,
            principals,
            valid_after: signed.valid_after,
            valid_before: signed.valid_before,
        })
    }

    async fn audit_cert_denied(
        &self,
        username: &str,
        reason: &'static str,
        key_fingerprint: Option<&str>,
        client_ip: &str,
    ) -> Result<(), CaError> {
        self.core
            .audit_alone(AuditEvent::CertDenied {
                username: username.to_owned(),
                reason,
                key_fingerprint: key_fingerprint.map(str::to_owned),
                client_ip: client_ip.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Revokes by serial, by key (its certificates and the key itself), or by user (all
    /// of their unexpired certificates and API sessions).
    pub async fn revoke(
        &self,
        grant: &Grant<proof::CertsRevoke>,
        request: &RevokeRequest,
    ) -> Result<RevokeResponse, CaError> {
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        let (target_desc, certificates, key_revoked) = match (&request.serial, &request.public_key, &request.username) {
            (Some(serial), None, None) => {
                let serial: u64 =
                    serial.trim().parse().map_err(|_| CaError::BadRequest("serial must be a decimal number".into()))?;
                let n = store::revoke_certs(tx.conn(), &RevokeTarget::Serial(serial), now).await?;
                if n == 0 {
                    return Err(CaError::NotFound("unrevoked, unexpired certificate with that serial"));
                }
                (format!("serial:{serial}"), n, false)
            }
            (None, Some(line), None) => {
                let key = PublicKey::from_openssh(line.trim())
                    .map_err(|_| CaError::BadRequest("public_key is not an OpenSSH public key".into()))?;
                let fp = fingerprint(key.key_data());
                let canonical = PublicKey::new(key.key_data().clone(), "")
                    .to_openssh()
                    .map_err(|_| CaError::BadRequest("public_key cannot be encoded".into()))?;
                let n = store::revoke_certs(tx.conn(), &RevokeTarget::KeyFingerprint(&fp), now).await?;
                let new = store::insert_revoked_key(tx.conn(), &fp, &canonical, now).await?;
                (format!("key:{fp}"), n, new)
            }
            (None, None, Some(username)) => {
                let n = store::revoke_certs(tx.conn(), &RevokeTarget::User(username), now).await?;
                store::revoke_user_sessions(tx.conn(), username, now).await?;
                (format!("user:{}", audit::sanitize(username)), n, false)
            }
            _ => {
                return Err(CaError::BadRequest("give exactly one of serial, public_key, username".into()));
            }
        };
        let krl_version =
            record_revocation(tx.conn(), now, grant.username(), target_desc, certificates, key_revoked).await?;
        tx.commit().await?;
        Ok(RevokeResponse { certificates_revoked: certificates, key_revoked, krl_version })
    }

    /// A user revokes one of their own certificates (no permission needed beyond being
    /// its holder): `portcullis logout`, or a lost laptop. Someone else's serial, or an
    /// unknown one, is "not found" alike, so serials cannot be probed.
    pub async fn revoke_own(&self, caller: &Caller, request: &RevokeOwnRequest) -> Result<RevokeResponse, CaError> {
        let serial: u64 =
            request.serial.trim().parse().map_err(|_| CaError::BadRequest("serial must be a decimal number".into()))?;
        let not_found = CaError::NotFound("unrevoked, unexpired certificate of yours with that serial");
        let owned = self.core.store.certificate(serial).await?.is_some_and(|c| c.username == caller.identity.username);
        if !owned {
            return Err(not_found);
        }
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        let n = store::revoke_certs(tx.conn(), &RevokeTarget::Serial(serial), now).await?;
        if n == 0 {
            return Err(not_found);
        }
        let actor = &caller.identity.username;
        let krl_version = record_revocation(tx.conn(), now, actor, format!("serial:{serial}"), n, false).await?;
        tx.commit().await?;
        Ok(RevokeResponse { certificates_revoked: n, key_revoked: false, krl_version })
    }

    /// The current KRL in OpenSSH's binary format.
    pub async fn krl(&self) -> Result<Arc<Vec<u8>>, CaError> {
        let now = self.core.now();
        let (version, changed_at) = self.core.store.krl_version().await?;
        {
            let cache = self.krl_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.as_ref().filter(|c| c.version == version && now < c.built_at + KRL_MAX_AGE) {
                return Ok(Arc::clone(&c.bytes));
            }
        }
        let keyring = self.core.keyring();
        // The generation date is when the revocation set last changed, so an unchanged set
        // encodes to the same bytes and nodes that refresh rewrite nothing.
        let mut krl = KrlBuilder::new(version, changed_at, "portcullis");
        for (serial, ca_fp) in self.core.store.revoked_unexpired(now).await? {
            let ca_key = keyring
                .rows()
                .iter()
                .find(|r| r.fingerprint == ca_fp)
                .and_then(|r| PublicKey::from_openssh(&r.public_key).ok());
            if let Some(ca_key) = ca_key {
                krl.revoke_serial(ca_key.key_data(), serial);
            }
        }
        for line in self.core.store.revoked_keys().await? {
            if let Ok(key) = PublicKey::from_openssh(&line) {
                krl.revoke_key_sha256(key.key_data());
            }
        }
        let bytes = Arc::new(krl.encode());
        *self.krl_cache.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(CachedKrl { version, built_at: now, bytes: Arc::clone(&bytes) });
        Ok(bytes)
    }

    pub async fn certificates(
        &self,
        _grant: &Grant<proof::CertsRevoke>,
        username: Option<&str>,
    ) -> Result<Vec<IssuedCert>, CaError> {
        Ok(self
            .core
            .store
            .certificates(username)
            .await?
            .into_iter()
            .map(|c| IssuedCert {
                serial: c.serial.to_string(),
                username: c.username,
                key_id: c.key_id,
                principals: c.principals,
                valid_after: c.valid_after,
                valid_before: c.valid_before,
                key_fingerprint: c.key_fingerprint,
                revoked: c.revoked_at.is_some(),
            })
            .collect())
    }

    /// What a node's `AuthorizedPrincipalsFile` for each login must list.
    pub async fn node_principals(
        &self,
        _grant: &Grant<proof::NodesManage>,
        name: &str,
    ) -> Result<NodePrincipals, CaError> {
        let node = self.core.store.node(name).await?.ok_or(CaError::NotFound("node"))?;
        let lines = self.principal_lines_of(&node);
        Ok(NodePrincipals { principals: principals_only(&lines), lines, node: node.name })
    }

    /// A node's `AuthorizedPrincipalsFile` lines per login: what the admin API shows and
    /// exactly what enrollment and refresh install.
    pub(crate) fn principal_lines_of(&self, node: &NodeRecord) -> BTreeMap<String, Vec<PrincipalLine>> {
        let wire = |line: portcullis_policies::PrincipalLine| PrincipalLine {
            options: line.options.iter().map(|o| (*o).to_owned()).collect(),
            principal: line.principal,
        };
        let mut lines: BTreeMap<String, Vec<PrincipalLine>> = self
            .core
            .policy()
            .node_principal_lines(&device_of(node))
            .into_iter()
            .map(|(login, lines)| (login, lines.into_iter().map(wire).collect()))
            .collect();
        // The discovery account accepts only its own node principal, and only while an
        // `inventory_enrichment` rule covers the node; its certificates allow no pty and
        // no forwarding, and neither does its line.
        if self.discovery_allowed(node).is_some() {
            let login = portcullis_proto::discovery::DISCOVERY_LOGIN;
            let principal = portcullis_policies::node_principal(&node.name, login);
            lines.insert(login.to_owned(), vec![PrincipalLine { options: vec!["restrict".to_owned()], principal }]);
        }
        lines
    }
}

/// The principals of each login's lines, without options.
pub(crate) fn principals_only(lines: &BTreeMap<String, Vec<PrincipalLine>>) -> BTreeMap<String, Vec<String>> {
    lines.iter().map(|(login, l)| (login.clone(), l.iter().map(|l| l.principal.clone()).collect())).collect()
}

/// The partition of a node whose record names none.
pub const DEFAULT_PARTITION: &str = "default";

/// The policy engine's view of an inventory record.
pub fn device_of(node: &NodeRecord) -> Device {
    Device {
        name: node.name.clone(),
        addresses: node.addresses.clone(),
        kind: node.kind.clone(),
        vendor: node.vendor.clone(),
        source: Some("portcullis".to_owned()),
        agent: node.agent.clone(),
        gateway: None,
        // A node enrolled or added without a partition is in the `default` one, so a
        // rule scoped to `partitions = ["default"]` (the shipped example) covers it.
        partition: Some(node.partition.clone().unwrap_or_else(|| DEFAULT_PARTITION.to_owned())),
        tags: node.tags.clone(),
        metadata: node.metadata.clone(),
        ssh_port: node.ssh_port,
    }
}

#[cfg(test)]
mod tests {
    /// Every option the policy engine writes into a principals line is one a node's
    /// `portcullis-enroll` accepts (it refuses a bundle with any other).
    #[test]
    fn policy_line_options_are_accepted_by_nodes() {
        for option in portcullis_policies::LINE_OPTIONS {
            assert!(portcullis_proto::PRINCIPAL_LINE_OPTIONS.contains(option), "{option}");
        }
    }
}
