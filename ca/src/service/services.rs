//! Service identities: bastions and edge agents enroll with a one-time token minted for
//! their kind, and get an API credential (`pcs_…`, stored hashed) and an internal
//! certificate (signed by the `internal` CA key) for the key they generated.

use super::caller::{random_token, token_hash};
use super::core::Core;
use super::pve::Proxmox;
use crate::audit::{self, AuditEvent, SYSTEM_ACTOR, sanitize};
use crate::error::CaError;
use crate::keys::KeyPurpose;
use crate::signer::{SignedCert, sign_service_cert};
use crate::store::{self, ServiceRow};
use portcullis_policies::Grant;
use portcullis_policies::proof;
use portcullis_proto::bastion::*;
use portcullis_sshcert::{fingerprint, parse_user_public_key};
use ssh_key::{Algorithm, PublicKey};
use std::sync::Arc;

/// An authenticated service (bearer `pcs_…` of an enrolled bastion or agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCaller {
    pub kind: ServiceKind,
    pub name: String,
}

/// `[a-z0-9][a-z0-9._-]{0,62}`: service names end up in principals, key ids, audit
/// records and file names.
pub fn valid_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// `host:port` (or `[v6]:port`), as agents will dial it.
fn valid_endpoint(endpoint: &str) -> bool {
    let Some((host, port)) = endpoint.rsplit_once(':') else { return false };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    port_ok && host_ok
}

fn kind_of(s: &str) -> Option<ServiceKind> {
    match s {
        "agent" => Some(ServiceKind::Agent),
        "bastion" => Some(ServiceKind::Bastion),
        _ => None,
    }
}

/// The `username` column of a service's certificate rows (never a valid user name: users
/// cannot contain ':').
fn cert_owner(kind: ServiceKind, name: &str) -> String {
    format!("service:{}:{name}", kind.as_str())
}

/// Checks an enrollment request; the service key must be Ed25519 (the bastion's is also
/// its SSH host key).
fn validate(
    kind: ServiceKind,
    name: &str,
    public_key: &str,
    agent_endpoint: Option<&str>,
) -> Result<PublicKey, CaError> {
    if !valid_service_name(name) {
        return Err(CaError::BadRequest("service names: [a-z0-9][a-z0-9._-]{0,62}".into()));
    }
    let key = parse_user_public_key(public_key).map_err(|e| CaError::BadRequest(format!("public key: {e}")))?;
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(CaError::BadRequest("service keys must be Ed25519".into()));
    }
    match (kind, agent_endpoint) {
        (ServiceKind::Agent, Some(_)) => Err(CaError::BadRequest("agents have no agent_endpoint".into())),
        (ServiceKind::Bastion, Some(e)) if !valid_endpoint(e) => {
            Err(CaError::BadRequest("agent_endpoint must be host:port".into()))
        }
        _ => Ok(key),
    }
}

/// The service identities service: bastions and edge agents enroll, register, renew
/// their certificates and learn each other (directory, host keys, an agent's targets).
pub struct ServiceIdentities {
    core: Arc<Core>,
    /// Which Proxmox VE API ports an agent may reach.
    proxmox: Arc<Proxmox>,
}

impl ServiceIdentities {
    pub(super) fn new(core: Arc<Core>, proxmox: Arc<Proxmox>) -> ServiceIdentities {
        ServiceIdentities { core, proxmox }
    }
    /// `POST /v1/services/enroll` with a one-time token minted for `request.kind`.
    pub async fn enroll_service(
        &self,
        token: &str,
        request: &ServiceEnrollRequest,
        client_ip: &str,
    ) -> Result<ServiceEnrollResponse, CaError> {
        let kind = request.kind;
        let refuse = |reason: &'static str| AuditEvent::ServiceEnrollRefused {
            kind: kind.as_str(),
            name: sanitize(&request.name),
            reason,
            client_ip: client_ip.to_owned(),
        };
        let key = match validate(kind, &request.name, &request.public_key, request.agent_endpoint.as_deref()) {
            Ok(key) => key,
            Err(e) => {
                self.core
                    .audit_refusal(client_ip, "invalid_request", &sanitize(&request.name), refuse("invalid_request"))
                    .await?;
                return Err(e);
            }
        };
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        let Some(grant) = store::consume_service_token(tx.conn(), &token_hash(token), kind.as_str(), now).await? else {
            drop(tx);
            self.core
                .audit_refusal(client_ip, "token_invalid", &sanitize(&request.name), refuse("token_invalid"))
                .await?;
            return Err(CaError::Unauthenticated);
        };
        // A registered name is re-enrolled only by a holder of the private key: the
        // public key alone (a bastion's is its SSH host key) proves nothing. Checked
        // after the token, so only a token holder learns that a name exists; the
        // refusal rolls the token's use back.
        if self.core.store.service(kind.as_str(), &request.name).await?.is_some()
            && !service_proof_valid(request, &key, token, now)
        {
            drop(tx);
            self.core.audit_alone(refuse("name_taken")).await?;
            return Err(CaError::Conflict(format!(
                "a {} with this name is enrolled; re-enrolling needs a proof by its key",
                kind.as_str()
            )));
        }
        let actor = format!("token:{}", grant.id);
        let registered = self
            .register(&mut tx, kind, &request.name, &key, request.agent_endpoint.as_deref(), false, &actor, client_ip)
            .await?;
        let Some(response) = registered else {
            // Rolls back the token use too: a refused take-over costs the token nothing.
            drop(tx);
            self.core.audit_alone(refuse("name_taken")).await?;
            return Err(CaError::Conflict(format!("a {} with this name is enrolled with another key", kind.as_str())));
        };
        tx.commit().await?;
        Ok(response)
    }
}

fn service_proof_valid(request: &ServiceEnrollRequest, key: &PublicKey, token: &str, now: u64) -> bool {
    let Some(proof) = &request.proof else { return false };
    let message = request.proof_message(token, proof.timestamp);
    super::enroll::check_signed_proof(key, ServiceProof::NAMESPACE, &message, proof.timestamp, &proof.signature, now)
        .is_ok()
}

impl ServiceIdentities {
    /// Registers a service of the CA's own process (the all-in-one's bastion and local
    /// agent) without a token; actor `system`. The key may change (the process owns both
    /// sides, and a lost key file must not lock it out).
    pub async fn register_service(
        &self,
        kind: ServiceKind,
        name: &str,
        public_key: &str,
        agent_endpoint: Option<&str>,
    ) -> Result<ServiceEnrollResponse, CaError> {
        let key = validate(kind, name, public_key, agent_endpoint)?;
        let mut tx = self.core.store.begin().await?;
        let response = self
            .register(&mut tx, kind, name, &key, agent_endpoint, true, SYSTEM_ACTOR, "local")
            .await?
            .ok_or_else(|| CaError::Internal("service registration".into()))?;
        tx.commit().await?;
        Ok(response)
    }

    /// `None` when the name is registered with another key and `replace_key` is false.
    #[allow(clippy::too_many_arguments)]
    async fn register(
        &self,
        tx: &mut store::WriteTx<'_>,
        kind: ServiceKind,
        name: &str,
        key: &PublicKey,
        agent_endpoint: Option<&str>,
        replace_key: bool,
        actor: &str,
        client_ip: &str,
    ) -> Result<Option<ServiceEnrollResponse>, CaError> {
        let now = self.core.now();
        let key_fingerprint = fingerprint(key.key_data());
        let public_key = PublicKey::new(key.key_data().clone(), "")
            .to_openssh()
            .map_err(|_| CaError::Internal("key encoding".into()))?;
        let new = self.core.store.service(kind.as_str(), name).await?.is_none();
        let row = ServiceRow {
            kind: kind.as_str().to_owned(),
            name: name.to_owned(),
            public_key,
            key_fingerprint: key_fingerprint.clone(),
            agent_endpoint: agent_endpoint.map(str::to_owned),
            enrolled_at: now,
            last_seen: Some(now),
            agents: Vec::new(),
        };
        let api_token = random_token("pcs_");
        if !store::upsert_service(tx.conn(), &row, &token_hash(&api_token), replace_key, now).await? {
            return Ok(None);
        }
        let signed = self.sign_internal(tx, kind, name, key, now).await?;
        audit::record(
            tx.conn(),
            now,
            &AuditEvent::ServiceEnrolled {
                actor: actor.to_owned(),
                kind: kind.as_str(),
                name: name.to_owned(),
                new,
                key_fingerprint,
                cert_serial: signed.serial.to_string(),
                client_ip: client_ip.to_owned(),
            },
        )
        .await?;
        Ok(Some(ServiceEnrollResponse {
            kind,
            name: name.to_owned(),
            api_token: api_token.into(),
            certificate: signed
                .certificate
                .to_openssh()
                .map_err(|_| CaError::Internal("certificate encoding".into()))?,
            internal_ca_keys: self.core.trusted_keys(KeyPurpose::Internal),
        }))
    }

    /// Signs and records an internal certificate for a service key.
    async fn sign_internal(
        &self,
        tx: &mut store::WriteTx<'_>,
        kind: ServiceKind,
        name: &str,
        key: &PublicKey,
        now: u64,
    ) -> Result<SignedCert, CaError> {
        let signer = self
            .core
            .keyring()
            .signer(KeyPurpose::Internal)
            .ok_or_else(|| CaError::Internal("no active internal CA key".into()))?;
        let principal = service_principal(kind, name);
        let key_id = format!("service:{}:{name}", kind.as_str());
        let signed = sign_service_cert(key, &key_id, &principal, &signer, now, self.core.clock_skew)?;
        store::insert_cert(
            tx.conn(),
            &signed.row(&signer.fingerprint, cert_owner(kind, name), vec![principal], Vec::new(), now),
        )
        .await?;
        Ok(signed)
    }

    /// Resolves a service's bearer token. Never logged; unknown → 401.
    pub async fn service_caller(&self, token: &str) -> Result<ServiceCaller, CaError> {
        let row = self.core.store.service_by_token(&token_hash(token)).await?.ok_or(CaError::Unauthenticated)?;
        let kind = kind_of(&row.kind).ok_or(CaError::Unauthenticated)?;
        Ok(ServiceCaller { kind, name: row.name })
    }

    /// `POST /v1/services/certificate`: a fresh internal certificate for the registered key.
    pub async fn renew_service_certificate(
        &self,
        caller: &ServiceCaller,
    ) -> Result<ServiceCertificateResponse, CaError> {
        let row = self.core.store.service(caller.kind.as_str(), &caller.name).await?.ok_or(CaError::Unauthenticated)?;
        let key =
            PublicKey::from_openssh(&row.public_key).map_err(|_| CaError::Internal("stored service key".into()))?;
        if self.core.store.is_key_revoked(&row.key_fingerprint).await? {
            return Err(CaError::Forbidden("this service's key has been revoked; enroll again with a new key"));
        }
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        let signed = self.sign_internal(&mut tx, caller.kind, &caller.name, &key, now).await?;
        store::touch_service(tx.conn(), caller.kind.as_str(), &caller.name, now).await?;
        audit::record(
            tx.conn(),
            now,
            &AuditEvent::ServiceCertIssued {
                kind: caller.kind.as_str(),
                name: caller.name.clone(),
                serial: signed.serial.to_string(),
                valid_before: signed.valid_before,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(ServiceCertificateResponse {
            certificate: signed
                .certificate
                .to_openssh()
                .map_err(|_| CaError::Internal("certificate encoding".into()))?,
            valid_before: signed.valid_before,
        })
    }

    /// `GET /v1/services/bastions`: where agents dial, with the host key to expect.
    pub async fn bastion_directory(&self) -> Result<Vec<BastionDirectoryEntry>, CaError> {
        Ok(self
            .core
            .store
            .services(ServiceKind::Bastion.as_str())
            .await?
            .into_iter()
            .filter_map(|b| {
                Some(BastionDirectoryEntry { name: b.name, agent_endpoint: b.agent_endpoint?, host_key: b.public_key })
            })
            .collect())
    }

    /// `GET /v1/bastions/host-keys`: every enrolled bastion's SSH host key (its identity
    /// key), one `KEY bastion:NAME` line each, revoked keys left out, so users pin
    /// bastions from the CA instead of trusting them on first use.
    pub async fn bastion_host_keys(&self) -> Result<String, CaError> {
        let mut out = String::new();
        for b in self.core.store.services(ServiceKind::Bastion.as_str()).await? {
            if self.core.store.is_key_revoked(&b.key_fingerprint).await? {
                continue;
            }
            let mut fields = b.public_key.split_whitespace();
            if let (Some(algorithm), Some(key)) = (fields.next(), fields.next()) {
                out.push_str(&format!("{algorithm} {key} bastion:{}\n", b.name));
            }
        }
        Ok(out)
    }

    /// `GET /v1/services/agent/targets`: the devices this agent serves (those assigned to
    /// it, and, for the configured default agent, those assigned to none), at their SSH port.
    pub async fn agent_targets(&self, caller: &ServiceCaller) -> Result<Vec<AgentTarget>, CaError> {
        let is_default = self.core.default_agent.as_deref() == Some(caller.name.as_str());
        let policy = self.core.policy();
        let targets = self
            .core
            .store
            .nodes()
            .await?
            .into_iter()
            .filter(|n| match &n.agent {
                Some(agent) => *agent == caller.name,
                None => is_default,
            })
            .map(|n| {
                // The API port only where a credential rule collects through this agent.
                let device = self.core.device(&n);
                // A fingerprint probes a device no credential rule covers.
                let api_ports = self.proxmox.api_ports(&policy, &device);
                AgentTarget { port: n.ssh_port_or_default(), device: n.name, addresses: n.addresses, api_ports }
            })
            .collect();
        let mut tx = self.core.store.begin().await?;
        store::touch_service(tx.conn(), caller.kind.as_str(), &caller.name, self.core.now()).await?;
        tx.commit().await?;
        Ok(targets)
    }

    /// `GET /v1/admin/agents` and `/v1/admin/bastions`.
    pub async fn service_infos(
        &self,
        _grant: &Grant<proof::NodesManage>,
        kind: ServiceKind,
    ) -> Result<Vec<ServiceInfo>, CaError> {
        let bastions = match kind {
            ServiceKind::Agent => self.core.live_bastions().await?,
            ServiceKind::Bastion => Vec::new(),
        };
        Ok(self
            .core
            .store
            .services(kind.as_str())
            .await?
            .into_iter()
            .map(|s| ServiceInfo {
                kind,
                connected_to: bastions.iter().filter(|b| b.agents.contains(&s.name)).map(|b| b.name.clone()).collect(),
                name: s.name,
                key_fingerprint: s.key_fingerprint,
                enrolled_at: s.enrolled_at,
                last_seen: s.last_seen,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_endpoints() {
        for ok in ["a", "edge-01", "b.lab_2", &"x".repeat(63)] {
            assert!(valid_service_name(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "A", "a b", "a:b", "a/b", &"x".repeat(64)] {
            assert!(!valid_service_name(bad), "{bad}");
        }
        for ok in ["bastion.example:2223", "10.0.0.1:22", "[::1]:2223"] {
            assert!(valid_endpoint(ok), "{ok}");
        }
        for bad in ["bastion", "bastion:0", ":22", "a b:22", "[::1:22", "host:99999"] {
            assert!(!valid_endpoint(bad), "{bad}");
        }
    }
}
