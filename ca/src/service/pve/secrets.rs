//! Token custody: stored secrets, sealed (`crate::sealed`), never rendered back —
//! listings, audit records and errors carry the public identity, the TLS policy's
//! description and a keyed fingerprint only.

use super::Proxmox;
use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::store::{self, SecretRow};
use portcullis_policies::{Grant, proof};
use portcullis_policies::{SECRET_NAME_RULE, valid_secret_name};
use portcullis_proto::pve::*;
use secrecy::SecretString;

fn secret_name(name: &str) -> Result<(), CaError> {
    valid_secret_name(name)
        .then_some(())
        .ok_or_else(|| CaError::BadRequest(format!("a secret name is {SECRET_NAME_RULE}")))
}

fn secret_value(value: &str) -> Result<(), CaError> {
    let ok = !value.is_empty() && value.len() <= MAX_SECRET_BYTES && value.chars().all(|c| c.is_ascii_graphic());
    ok.then_some(())
        .ok_or_else(|| CaError::BadRequest(format!("the secret must be 1-{MAX_SECRET_BYTES} printable characters")))
}

fn identity(identity: &str) -> Result<(), CaError> {
    valid_token_identity(identity)
        .then_some(())
        .ok_or_else(|| CaError::BadRequest("the identity must be a PVE token id, USER@REALM!TOKENID".into()))
}

fn tls(policy: &TlsPolicy) -> Result<String, CaError> {
    if let TlsPolicy::CaBundle { pem } = policy
        && pem.len() > MAX_CA_BUNDLE_BYTES
    {
        return Err(CaError::BadRequest("the CA bundle is too large".into()));
    }
    portcullis_proto::pin::api_client_config(policy).map_err(|e| CaError::BadRequest(format!("TLS policy: {e}")))?;
    serde_json::to_string(policy).map_err(|_| CaError::Internal("TLS policy encoding".into()))
}

impl Proxmox {
    fn secret_info(&self, row: SecretRow) -> SecretInfo {
        let policy = self.core.policy();
        let rules = policy
            .rules()
            .filter(|r| r.credential().is_some_and(|k| k.secret() == row.name))
            .map(|r| r.name().to_owned())
            .collect();
        let tls =
            serde_json::from_str::<TlsPolicy>(&row.tls_json).map_or_else(|_| "(unreadable)".into(), |t| t.describe());
        SecretInfo {
            name: row.name,
            kind: row.kind,
            identity: row.identity,
            fingerprint: row.fingerprint,
            tls,
            created_at: row.created_at,
            rotated_at: row.rotated_at,
            changed_by: row.changed_by,
            rules,
        }
    }

    /// `GET /v1/admin/secrets`.
    pub async fn secrets(&self, _grant: &Grant<proof::SecretsManage>) -> Result<Vec<SecretInfo>, CaError> {
        Ok(self.core.store.secrets().await?.into_iter().map(|r| self.secret_info(r)).collect())
    }

    /// `POST /v1/admin/secrets`.
    pub async fn add_secret(
        &self,
        grant: &Grant<proof::SecretsManage>,
        req: &SecretAddRequest,
    ) -> Result<SecretInfo, CaError> {
        secret_name(&req.name)?;
        if req.kind != PROXMOX_API_TOKEN {
            return Err(CaError::BadRequest(format!("unknown secret kind; the known kind is {PROXMOX_API_TOKEN}")));
        }
        identity(&req.identity)?;
        secret_value(req.secret.expose())?;
        let tls_json = tls(&req.tls)?;
        let value = SecretString::from(req.secret.expose());
        let now = self.core.now();
        let row = SecretRow {
            name: req.name.clone(),
            kind: req.kind.clone(),
            identity: req.identity.clone(),
            sealed: crate::sealed::seal(&self.core.passphrase, &req.name, &req.kind, &value)?,
            fingerprint: crate::sealed::fingerprint(&req.name, &value),
            tls_json,
            created_at: now,
            rotated_at: None,
            changed_by: grant.username().to_owned(),
        };
        let mut tx = self.core.store.begin().await?;
        if !store::insert_secret(tx.conn(), &row).await? {
            return Err(CaError::Conflict(format!("a secret named {:?} exists; rotate it instead", req.name)));
        }
        let event = AuditEvent::SecretAdded {
            name: row.name.clone(),
            kind: row.kind.clone(),
            identity: row.identity.clone(),
            fingerprint: row.fingerprint.clone(),
            tls: req.tls.describe(),
            by: row.changed_by.clone(),
        };
        audit::record(tx.conn(), now, &event).await?;
        tx.commit().await?;
        Ok(self.secret_info(row))
    }

    /// `PUT /v1/admin/secrets/{name}`: a new value; identity and TLS policy stay unless given.
    pub async fn rotate_secret(
        &self,
        grant: &Grant<proof::SecretsManage>,
        name: &str,
        req: &SecretRotateRequest,
    ) -> Result<SecretInfo, CaError> {
        secret_name(name)?;
        secret_value(req.secret.expose())?;
        let mut row = self.core.store.secret(name).await?.ok_or(CaError::NotFound("secret"))?;
        if let Some(id) = &req.identity {
            identity(id)?;
            row.identity = id.clone();
        }
        if let Some(policy) = &req.tls {
            row.tls_json = tls(policy)?;
        }
        let value = SecretString::from(req.secret.expose());
        let now = self.core.now();
        row.sealed = crate::sealed::seal(&self.core.passphrase, &row.name, &row.kind, &value)?;
        row.fingerprint = crate::sealed::fingerprint(&row.name, &value);
        row.changed_by = grant.username().to_owned();
        row.rotated_at = Some(now);
        let mut tx = self.core.store.begin().await?;
        if !store::rotate_secret(tx.conn(), &row, now).await? {
            return Err(CaError::NotFound("secret"));
        }
        let described = serde_json::from_str::<TlsPolicy>(&row.tls_json).map(|t| t.describe()).unwrap_or_default();
        let event = AuditEvent::SecretRotated {
            name: row.name.clone(),
            identity: row.identity.clone(),
            fingerprint: row.fingerprint.clone(),
            tls: described,
            by: row.changed_by.clone(),
        };
        audit::record(tx.conn(), now, &event).await?;
        tx.commit().await?;
        Ok(self.secret_info(row))
    }

    /// `DELETE /v1/admin/secrets/{name}`. Rules that name it then collect nothing (logged).
    pub async fn remove_secret(&self, grant: &Grant<proof::SecretsManage>, name: &str) -> Result<(), CaError> {
        secret_name(name)?;
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        if !store::delete_secret(tx.conn(), name).await? {
            return Err(CaError::NotFound("secret"));
        }
        let event = AuditEvent::SecretRemoved { name: name.to_owned(), by: grant.username().to_owned() };
        audit::record(tx.conn(), now, &event).await?;
        Ok(tx.commit().await?)
    }

    /// The decrypted token of a stored secret, for one claim.
    pub(super) async fn unseal(&self, name: &str) -> Result<Option<(SecretRow, SecretString, TlsPolicy)>, CaError> {
        let Some(row) = self.core.store.secret(name).await? else { return Ok(None) };
        let value = crate::sealed::open(&self.core.passphrase, &row.name, &row.kind, &row.sealed)?;
        let policy = serde_json::from_str(&row.tls_json).map_err(|_| CaError::Internal("stored TLS policy".into()))?;
        Ok(Some((row, value, policy)))
    }
}
