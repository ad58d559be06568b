//! Issuing user certificates: a policy decision, a signature with the active user CA
//! key, and the certificate stored with its audit record (by the group-committing
//! writer) before the caller sees it.

use super::Caller;
use super::core::Core;
use super::writer::{IssuanceWriter, Requester, Stored};
use crate::audit::AuditEvent;
use crate::error::CaError;
use crate::keys::KeyPurpose;
use crate::signer::{new_serial, sign_user_cert};
use portcullis_policies::{CertRequest, Grant, proof};
use portcullis_proto::{IssuedCert, UserCertRequest, UserCertResponse};
use portcullis_sshcert::authenticator::VERIFY_REQUIRED;

/// Certificates `GET /v1/admin/certs` lists unless asked for fewer or more, and at most.
const DEFAULT_CERT_LIST: u32 = 500;
const MAX_CERT_LIST: u32 = 10_000;
use portcullis_sshcert::{fingerprint, is_security_key, parse_user_public_key};
use std::sync::Arc;
use std::time::Duration;

/// The issuance service.
pub struct Issuance {
    core: Arc<Core>,
    writer: IssuanceWriter,
    /// Hard cap on any certificate's lifetime, whatever the policy says.
    max_cert_ttl: Duration,
}

impl Issuance {
    pub(super) fn new(core: Arc<Core>, max_cert_ttl: Duration) -> Issuance {
        Issuance { writer: IssuanceWriter::spawn(core.store.clone()), max_cert_ttl, core }
    }

    /// `POST /v1/certs/user`: a certificate for the caller's key, as the policy allows
    /// (roles, principals, lifetime within the cap), answered only once it is stored with
    /// its `cert_issued` record; a refusal is audited as `cert_denied`.
    pub async fn issue(
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
        // sshd ignores `verify-required` for a key that is not a security key, so the
        // role's requirement would silently not hold (the bastion refuses such a
        // certificate too).
        if permit.critical_options().contains_key(VERIFY_REQUIRED) && !is_security_key(public_key.key_data()) {
            let reason = "verify_required_needs_security_key";
            self.audit_cert_denied(&who.username, reason, Some(&key_fingerprint), client_ip).await?;
            return Err(CaError::BadRequest(
                "a role you asked for requires user verification (verify-required), which only a security key can \
                 give: make one with `ssh-keygen -t ed25519-sk -O verify-required -f ~/.ssh/id_ed25519_sk` and \
                 certify it with `portcullis login --key ~/.ssh/id_ed25519_sk`, or ask only for roles that do not \
                 (`portcullis login --role`)"
                    .into(),
            ));
        }
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
        // Sessions opened with it are judged as its API session is (see
        // `Sessions::usable_certificate`).
        row.groups_unknown = caller.groups_unknown;
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
        // The writer checks, inside the storing transaction, that the session is still
        // live and the key not revoked: either may have changed since the checks above.
        let requester = Requester { session: caller.token_hash().to_owned(), client_ip: client_ip.to_owned() };
        match self.writer.write(row, event, requester).await? {
            Stored::Issued => {}
            Stored::SessionEnded => return Err(CaError::Unauthenticated),
            Stored::KeyRevoked => {
                return Err(CaError::BadRequest("this public key has been revoked; generate a new key".into()));
            }
            Stored::SignerWithdrawn => {
                // Read the keyring now, so the client's retry is signed with the key in force.
                self.core.follow_key_changes().await?;
                return Err(CaError::Busy { retry_after: 1 });
            }
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

    pub async fn certificates(
        &self,
        _grant: &Grant<proof::CertsRevoke>,
        username: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<IssuedCert>, CaError> {
        // Every issued certificate stays on record (a session's too): the listing is
        // bounded, newest first.
        let limit = limit.unwrap_or(DEFAULT_CERT_LIST).clamp(1, MAX_CERT_LIST);
        Ok(self
            .core
            .store
            .certificates(username, limit)
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
}
