//! Node enrollment with a one-time token (made in `tokens.rs`), the trust bundle a node
//! installs, and node-proof authenticated refresh and removal.

use super::caller::token_hash;
use super::nodes::Nodes;
use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::keys::KeyPurpose;
use crate::signer::{HOST_CERT_TTL, sign_host_cert, sign_verification_cert};
use crate::store::{self, HostCertRow};
use crate::validate::{MAX_HOST_KEYS, address_host};
use base64::Engine;
use portcullis_policies::DEFAULT_SSH_PORT;
use portcullis_proto::NodeRecord;
use portcullis_proto::enroll::*;
use portcullis_sshcert::{fingerprint, parse_user_public_key, random_bytes};
use ssh_key::{PublicKey, SshSig};

/// Whether a token with `reach` (see [`store::EnrollTokenRow::reach`]) may enroll `device`. A
/// stored query that no longer parses matches nothing: refused, not widened.
fn token_reaches(reach: Option<&[String]>, device: &portcullis_policies::Device) -> bool {
    reach.is_none_or(|queries| {
        queries.iter().any(|q| portcullis_policies::TargetQuery::parse(q).is_ok_and(|q| q.matches(device)))
    })
}

/// A proof of possession (node or service) older or newer than this is refused.
const PROOF_WINDOW: u64 = 300;
/// A host certificate with less life than this left is renewed at the next refresh.
const HOST_CERT_RENEW_BEFORE: u64 = 7 * 24 * 3600;
/// How long after enrolling a node may still roll the enrollment back at the CA.
const ENROLL_ABORT_WINDOW: u64 = 30 * 60;

impl Nodes {
    /// Registers a node with a one-time token and returns what it must install.
    pub async fn enroll(
        &self,
        token: &str,
        request: &EnrollRequest,
        client_ip: &str,
    ) -> Result<EnrollResponse, CaError> {
        let facts = &request.facts;
        let host_keys = match validate_facts(facts) {
            Ok(keys) => keys,
            Err(e) => {
                self.audit_enroll_refused("invalid_facts", client_ip).await?;
                return Err(e);
            }
        };
        let verification_key = parse_user_public_key(&request.verification_public_key)
            .map_err(|e| CaError::BadRequest(format!("verification key: {e}")))?;
        // Read on the pool before the transaction: see `store::node_for_update`.
        let krl = self.revocation.krl().await?;
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        let Some(grant) = store::consume_enroll_token(tx.conn(), &token_hash(token), &facts.name, now).await? else {
            drop(tx);
            self.audit_enroll_refused("token_invalid", client_ip).await?;
            return Err(CaError::Unauthenticated);
        };
        let existing = store::node_for_update(&mut tx, &facts.name).await?;
        // A name that is enrolled (has pinned host keys) is re-enrolled only by a holder
        // of one of those private keys: public host keys are public (`ssh-keyscan`).
        // Checked after the token (only a token holder learns that a name exists);
        // refusing rolls the token's use back.
        if let Some(node) = existing.as_ref().filter(|n| !n.host_keys.is_empty()) {
            let action = NodeProof::enroll_action(facts, token);
            let proven = match &request.proof {
                Some(proof) if proof.node == node.name => proof_by(node, proof, &action, now).is_ok(),
                _ => false,
            };
            if !proven {
                drop(tx);
                self.audit_enroll_refused("name_taken", client_ip).await?;
                return Err(CaError::Conflict(
                    "a node with this name is enrolled; re-enrolling needs a proof by one of its host keys".into(),
                ));
            }
        }
        // A name an administrator registered by hand has no keys to prove: only a token
        // bound to that name may claim it. Refusing rolls the token's use back.
        if existing.as_ref().is_some_and(|n| n.host_keys.is_empty()) && grant.node.as_deref() != Some(&facts.name) {
            drop(tx);
            self.audit_enroll_refused("name_reserved", client_ip).await?;
            return Err(CaError::Conflict(
                "this node name was registered by an administrator; enroll it with a token bound to the name \
                 (enroll-token create --node NAME)"
                    .into(),
            ));
        }
        let nodes = store::nodes_for_identity(&mut tx).await?;
        if let Some((reason, message)) = super::nodes::identity_clash(&facts.name, &host_keys, &nodes) {
            drop(tx);
            self.audit_enroll_refused(reason, client_ip).await?;
            return Err(CaError::Conflict(message.into()));
        }
        let previous_json = match &existing {
            Some(n) => Some(serde_json::to_string(n).map_err(|_| CaError::Internal("node record".into()))?),
            None => None,
        };
        let previous_route = existing.as_ref().map(|n| (n.addresses.clone(), n.ssh_port.unwrap_or(DEFAULT_SSH_PORT)));
        let mut node = existing.unwrap_or_default();
        node.name = facts.name.clone();
        node.addresses = facts.addresses.clone();
        node.host_keys = host_keys.iter().filter_map(|k| k.to_openssh().ok()).collect();
        node.os = facts.os.clone();
        node.sshd_version = facts.sshd_version.clone();
        node.ssh_port = facts.ssh_port.or(node.ssh_port);
        // A token's tags, partition and agent describe a new node; they never override
        // what an existing node already has (a lab token must not relabel a prod node).
        for (key, value) in &grant.tags {
            node.tags.entry(key.clone()).or_insert_with(|| value.clone());
        }
        if let Some(cluster) = &facts.pve_cluster {
            node.tags.insert("pve_cluster".into(), cluster.clone());
        }
        if let Some(pve_node) = &facts.pve_node {
            node.tags.insert("pve_node".into(), pve_node.clone());
        }
        if node.partition.is_none() {
            node.partition = grant.partition.clone();
        }
        if node.agent.is_none() {
            node.agent = grant.agent.clone();
        }
        // A token made by an administrator of some nodes only enrolls one of those, as
        // the node will be (the name and addresses it reports, the tags it keeps), and
        // reached where it was registered: the addresses and port the node reports must
        // be ones an administrator of every node gave it (they make the agents'
        // allow-lists).
        let registered_route = previous_route.as_ref().is_some_and(|(addresses, port)| {
            !addresses.is_empty()
                && node.addresses.iter().all(|a| addresses.contains(a))
                && node.ssh_port.unwrap_or(DEFAULT_SSH_PORT) == *port
        });
        if grant.reach.is_some() && !registered_route {
            drop(tx);
            self.audit_enroll_refused("outside_token_reach", client_ip).await?;
            return Err(CaError::Forbidden(
                "this token enrolls the registered node only where it was registered; the node reports other \
                 addresses or another port (an administrator of every node changes them)",
            ));
        }
        if !token_reaches(grant.reach.as_deref(), &self.core.device(&node)) {
            drop(tx);
            self.audit_enroll_refused("outside_token_reach", client_ip).await?;
            return Err(CaError::Forbidden(
                "this token enrolls only nodes its creator manages; this node would be outside them",
            ));
        }
        let new = store::upsert_node(tx.conn(), &node, now).await?;
        let (bundle, serials) = self.bundle(tx.conn(), &node, &nodes, &host_keys, &krl, now).await?;

        let signer =
            self.core.keyring().signer(KeyPurpose::User).ok_or_else(|| CaError::Internal("no user CA key".into()))?;
        let principal = format!("pcv_{}", hex::encode(random_bytes::<8>()));
        let verification =
            sign_verification_cert(&verification_key, &node.name, &node.addresses, &principal, &signer, now)?;
        store::insert_cert(
            tx.conn(),
            &verification.row(
                &signer.fingerprint,
                format!("node:{}", node.name),
                vec![principal.clone()],
                Vec::new(),
                now,
            ),
        )
        .await?;
        let attempt = store::EnrollAttemptRow {
            verification_principal: principal.clone(),
            node: node.name.clone(),
            token_id: grant.id.clone(),
            verification_serial: verification.serial,
            previous_json,
            expires_at: now.saturating_add(ENROLL_ABORT_WINDOW),
        };
        store::insert_enroll_attempt(tx.conn(), &attempt, now).await?;
        audit::record(
            tx.conn(),
            now,
            &AuditEvent::NodeEnrolled {
                name: node.name.clone(),
                token_id: grant.id,
                new,
                host_key_fingerprints: host_keys.iter().map(|k| fingerprint(k.key_data())).collect(),
                host_cert_serials: serials,
                verification_serial: verification.serial.to_string(),
                client_ip: client_ip.to_owned(),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(EnrollResponse {
            bundle,
            verification_certificate: verification
                .certificate
                .to_openssh()
                .map_err(|_| CaError::Internal("certificate encoding".into()))?,
            verification_principal: principal,
            verification_login: "root".to_owned(),
        })
    }

    /// The node rolled an enrollment back: undo the registration (a new node is removed,
    /// an existing one gets its earlier record back), revoke the attempt's verification
    /// certificate and give the token its use back. Authenticated by the node's host key
    /// (the one this enrollment pinned) over the attempt's verification principal.
    pub async fn abort_enrollment(&self, request: &EnrollAbortRequest, client_ip: &str) -> Result<(), CaError> {
        let action = NodeProof::abort_action(&request.verification_principal);
        let node = self.verify_node_proof(&request.proof, &action, client_ip).await?;
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        let Some(attempt) =
            store::take_enroll_attempt(tx.conn(), &request.verification_principal, &node.name, now).await?
        else {
            return Err(CaError::NotFound("enrollment that can still be rolled back"));
        };
        let restored = match &attempt.previous_json {
            None => {
                store::delete_node(tx.conn(), &node.name).await?;
                super::revocation::retire_node_certs(tx.conn(), &node.name, &format!("node:{}", node.name), now)
                    .await?;
                false
            }
            Some(json) => {
                let previous: NodeRecord =
                    serde_json::from_str(json).map_err(|_| CaError::Internal("stored node record".into()))?;
                store::upsert_node(tx.conn(), &previous, now).await?;
                let serial = store::RevokeTarget::Serial(attempt.verification_serial);
                if store::revoke_certs(tx.conn(), &serial, now).await? > 0 {
                    let target = format!("serial:{}", attempt.verification_serial);
                    super::revocation::record_revocation(
                        tx.conn(),
                        now,
                        &format!("node:{}", node.name),
                        target,
                        1,
                        false,
                    )
                    .await?;
                }
                true
            }
        };
        store::return_token_use(tx.conn(), &attempt.token_id).await?;
        let event = AuditEvent::NodeEnrollAborted {
            name: node.name.clone(),
            token_id: attempt.token_id,
            restored,
            client_ip: client_ip.to_owned(),
        };
        audit::record(tx.conn(), now, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_enroll_refused(&self, reason: &'static str, client_ip: &str) -> Result<(), CaError> {
        let event = AuditEvent::EnrollRefused { reason, client_ip: client_ip.to_owned() };
        // Before a valid token the caller is anonymous: recorded once per window, then
        // counted. A token holder's refusals (a take-over attempt) are recorded each.
        if matches!(reason, "invalid_facts" | "token_invalid") {
            self.core.audit_refusal(client_ip, reason, "", event).await
        } else {
            self.core.audit_alone(event).await
        }
    }

    /// The trust bundle for `node`; host certificates are reused while they have plenty
    /// of life left and their signer is still the active host CA key.
    /// `nodes`: every registered node (read once by the caller), for [`host_principals`].
    async fn bundle(
        &self,
        conn: &mut sqlx::AnyConnection,
        node: &NodeRecord,
        nodes: &[NodeRecord],
        host_keys: &[PublicKey],
        krl: &[u8],
        now: u64,
    ) -> Result<(NodeBundle, Vec<String>), CaError> {
        let host_signer =
            self.core.keyring().signer(KeyPurpose::Host).ok_or_else(|| CaError::Internal("no host CA key".into()))?;
        let principals = host_principals(node, nodes);
        let mut certificates = Vec::with_capacity(host_keys.len());
        let mut serials = Vec::new();
        for key in host_keys {
            let fp = fingerprint(key.key_data());
            // Reused only while it names exactly what the node may be called now (an
            // address another node took since is dropped at once, not at renewal).
            let current = store::host_cert(conn, &node.name, &fp).await?.filter(|c| {
                c.ca_fingerprint == host_signer.fingerprint
                    && c.valid_before > now.saturating_add(HOST_CERT_RENEW_BEFORE)
                    && ssh_key::Certificate::from_openssh(c.certificate.trim())
                        .is_ok_and(|cert| cert.valid_principals() == principals.as_slice())
            });
            if let Some(current) = current {
                certificates.push(current.certificate);
                continue;
            }
            let signed = sign_host_cert(key, &node.name, &principals, &host_signer, now, self.core.clock_skew)?;
            let text = signed.certificate.to_openssh().map_err(|_| CaError::Internal("certificate encoding".into()))?;
            store::insert_cert(
                conn,
                &signed.row(
                    &host_signer.fingerprint,
                    format!("node:{}", node.name),
                    principals.clone(),
                    Vec::new(),
                    now,
                ),
            )
            .await?;
            let row = HostCertRow {
                ca_fingerprint: host_signer.fingerprint.clone(),
                certificate: text.clone(),
                valid_before: now.saturating_add(HOST_CERT_TTL),
            };
            store::save_host_cert(conn, &node.name, &fp, signed.serial, &row).await?;
            serials.push(signed.serial.to_string());
            certificates.push(text);
        }
        let lines = self.principal_lines_of(node);
        let bundle = NodeBundle {
            node: node.name.clone(),
            trusted_user_ca_keys: self.core.trusted_keys(KeyPurpose::User),
            principals: super::principals::principals_only(&lines),
            principal_lines: lines,
            krl_base64: base64::engine::general_purpose::STANDARD.encode(krl),
            host_certificates: certificates,
            trusted_host_ca_keys: self.core.trusted_keys(KeyPurpose::Host),
        };
        Ok((bundle, serials))
    }

    /// Checks a node's proof of holding one of its registered host keys.
    async fn verify_node_proof(&self, proof: &NodeProof, action: &str, client_ip: &str) -> Result<NodeRecord, CaError> {
        match self.check_node_proof(proof, action).await? {
            Ok(node) => Ok(node),
            Err(reason) => Err(self.refuse_node_proof(proof, reason, client_ip).await),
        }
    }

    /// Audits a refused node proof; the error to answer with.
    async fn refuse_node_proof(&self, proof: &NodeProof, reason: &'static str, client_ip: &str) -> CaError {
        let audited = self
            .core
            .audit_alone(AuditEvent::NodeProofRefused {
                node: audit::sanitize(&proof.node),
                reason,
                client_ip: client_ip.to_owned(),
            })
            .await;
        audited.err().unwrap_or(CaError::Unauthenticated)
    }

    async fn check_node_proof(
        &self,
        proof: &NodeProof,
        action: &str,
    ) -> Result<Result<NodeRecord, &'static str>, CaError> {
        let Some(node) = self.core.store.node(&proof.node).await? else { return Ok(Err("unknown_node")) };
        Ok(proof_by(&node, proof, action, self.core.now()).map(|()| node))
    }

    /// What an enrolled node fetches on its refresh timer.
    pub async fn node_refresh(&self, proof: &NodeProof, client_ip: &str) -> Result<NodeBundle, CaError> {
        // Checked first without a transaction, so a stream of bad proofs costs no write
        // lock; then again on the record read inside the transaction, which is what the
        // certificates are signed for: a re-key or a removal that committed while this
        // refresh waited (the answer to a stolen host key) is not undone by it.
        self.verify_node_proof(proof, "refresh", client_ip).await?;
        let now = self.core.now();
        let krl = self.revocation.krl().await?;
        let mut tx = self.core.store.begin().await?;
        let node = match store::node_for_update(&mut tx, &proof.node).await? {
            Some(node) if proof_by(&node, proof, "refresh", now).is_ok() => node,
            _ => {
                drop(tx);
                return Err(self.refuse_node_proof(proof, "changed_meanwhile", client_ip).await);
            }
        };
        let host_keys: Vec<PublicKey> = node.host_keys.iter().filter_map(|k| PublicKey::from_openssh(k).ok()).collect();
        let nodes = store::nodes_on(tx.conn()).await?;
        let (bundle, serials) = self.bundle(tx.conn(), &node, &nodes, &host_keys, &krl, now).await?;
        if !serials.is_empty() {
            audit::record(
                tx.conn(),
                now,
                &AuditEvent::NodeRefreshed {
                    name: node.name.clone(),
                    host_cert_serials: serials,
                    client_ip: client_ip.to_owned(),
                },
            )
            .await?;
        }
        store::touch_node(tx.conn(), &node.name, now).await?;
        tx.commit().await?;
        Ok(bundle)
    }

    /// The node leaves: it is removed from the inventory and its host certificates revoked.
    pub async fn node_deregister(&self, proof: &NodeProof, client_ip: &str) -> Result<(), CaError> {
        let node = self.verify_node_proof(proof, "deregister", client_ip).await?;
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        store::delete_node(tx.conn(), &node.name).await?;
        super::revocation::retire_node_certs(tx.conn(), &node.name, &format!("node:{}", node.name), now).await?;
        audit::record(
            tx.conn(),
            now,
            &AuditEvent::NodeDeregistered { name: node.name.clone(), client_ip: client_ip.to_owned() },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Whether `proof` is by one of `node`'s registered host keys, over `action`.
fn proof_by(node: &NodeRecord, proof: &NodeProof, action: &str, now: u64) -> Result<(), &'static str> {
    let key = PublicKey::from_openssh(proof.host_public_key.trim()).map_err(|_| "bad_key")?;
    let fp = fingerprint(key.key_data());
    let registered =
        node.host_keys.iter().filter_map(|k| PublicKey::from_openssh(k).ok()).any(|k| fingerprint(k.key_data()) == fp);
    if !registered {
        return Err("unregistered_host_key");
    }
    let message = NodeProof::message(&proof.node, action, proof.timestamp);
    check_signed_proof(&key, NodeProof::NAMESPACE, &message, proof.timestamp, &proof.signature, now)
}

/// The one check behind every proof of possession (node refresh, deregistration and
/// re-enrollment, service re-enrollment): made within [`PROOF_WINDOW`] of `now`, and an
/// SSHSIG by `key` over `message` in `namespace`. `Err`: the audited reason.
pub(super) fn check_signed_proof(
    key: &PublicKey,
    namespace: &str,
    message: &str,
    timestamp: u64,
    signature: &str,
    now: u64,
) -> Result<(), &'static str> {
    if now.abs_diff(timestamp) > PROOF_WINDOW {
        return Err("stale_proof");
    }
    let signature = SshSig::from_pem(signature.trim()).map_err(|_| "bad_signature")?;
    key.verify(namespace, message.as_bytes(), &signature).map_err(|_| "bad_signature")
}

/// Node facts come from the network: names and addresses are checked, host keys parsed.
fn validate_facts(facts: &NodeFacts) -> Result<Vec<PublicKey>, CaError> {
    crate::validate::node_name(&facts.name)?;
    crate::validate::addresses(&facts.addresses)?;
    crate::validate::ssh_port(facts.ssh_port)?;
    for text in [&facts.os, &facts.sshd_version, &facts.pve_cluster, &facts.pve_node].into_iter().flatten() {
        if text.len() > 200 || text.chars().any(char::is_control) {
            return Err(CaError::BadRequest("node facts must be short printable text".into()));
        }
    }
    if facts.host_keys.is_empty() {
        return Err(CaError::BadRequest(format!("send between 1 and {MAX_HOST_KEYS} host keys")));
    }
    crate::validate::host_keys(&facts.host_keys)
}

/// The names `node`'s host certificates carry: its name, and each of its addresses
/// that no other node holds (as its name or one of its addresses). Users trust the
/// host CA for every host (`@cert-authority *`) and a node reports its own
/// addresses, so a certificate naming another node's address would let this node
/// pose as that one; an address several nodes report (a bridge's 172.17.0.1 on every
/// host) identifies none of them. (Until 2026-12-05 every reported address was
/// certified; found in review.)
fn host_principals(node: &NodeRecord, nodes: &[NodeRecord]) -> Vec<String> {
    let taken: std::collections::BTreeSet<String> = nodes
        .iter()
        .filter(|n| n.name != node.name)
        .flat_map(|n| std::iter::once(&n.name).chain(&n.addresses))
        .map(|a| address_host(a))
        .collect();
    let mut principals = vec![node.name.clone()];
    for address in &node.addresses {
        if !taken.contains(&address_host(address)) && !principals.contains(address) {
            principals.push(address.clone());
        }
    }
    principals
}
