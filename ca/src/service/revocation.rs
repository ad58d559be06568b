//! Revoking certificates, keys and users, and publishing the KRL that nodes and
//! bastions check.

use super::Caller;
use super::core::Core;
use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::store::{self, RevokeTarget};
use portcullis_policies::{Grant, proof};
use portcullis_proto::{RevokeOwnRequest, RevokeRequest, RevokeResponse};
use portcullis_sshcert::{KrlBuilder, fingerprint};
use ssh_key::PublicKey;
use std::sync::{Arc, Mutex};

/// The revocation service. Its own state: the last KRL built.
pub struct Revocation {
    core: Arc<Core>,
    krl_cache: Mutex<Option<CachedKrl>>,
}

struct CachedKrl {
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

/// Forgets a node's host certificates and revokes every certificate issued to the node
/// (host and verification), inside the caller's transaction; returns how many.
pub(super) async fn retire_node_certs(
    conn: &mut sqlx::AnyConnection,
    name: &str,
    actor: &str,
    now: u64,
) -> Result<u64, CaError> {
    store::delete_host_certs(conn, name).await?;
    let owner = format!("node:{name}");
    let n = store::revoke_certs(conn, &store::RevokeTarget::User(&owner), now).await?;
    if n > 0 {
        record_revocation(conn, now, actor, owner, n, false).await?;
    }
    Ok(n)
}

/// A cached KRL is rebuilt at least this often, so expired entries drop out and the
/// generation date stays fresh even without new revocations.
const KRL_MAX_AGE: u64 = 300;
/// How long a revoked certificate stays in the KRL after it expired by the CA's clock:
/// sshd judges expiry by the node's clock, and a node whose clock lags would otherwise
/// accept a certificate the moment it left the KRL, until its own clock caught up.
const KRL_AFTER_EXPIRY: u64 = 3600;

impl Revocation {
    pub(super) fn new(core: Arc<Core>) -> Revocation {
        Revocation { core, krl_cache: Mutex::new(None) }
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
                // In the KRL, a CA key the CA still signs with would make every node refuse
                // every certificate it issues — the nodes' enrollment tool refuses such a
                // KRL, so revocations would stop reaching them. Rotate first. Asked of the
                // database in this transaction (the row locked), not of this replica's
                // keyring, which may not have seen another replica's activation yet.
                let fp = fingerprint(key.key_data());
                if store::ca_key_state(&mut tx, &fp).await?.as_deref() == Some(crate::keys::state::ACTIVE) {
                    return Err(CaError::BadRequest(
                        "this is a key the CA signs with: rotate it first (admin ca-keys), then revoke the old one"
                            .into(),
                    ));
                }
                let canonical = PublicKey::new(key.key_data().clone(), "")
                    .to_openssh()
                    .map_err(|_| CaError::BadRequest("public_key cannot be encoded".into()))?;
                let n = store::revoke_certs(tx.conn(), &RevokeTarget::KeyFingerprint(&fp), now).await?;
                let new = store::insert_revoked_key(tx.conn(), &fp, &canonical, now).await?;
                (format!("key:{fp}"), n, new)
            }
            (None, None, Some(username)) => {
                // Sessions first: see `store::live_sessions_among`.
                store::revoke_user_sessions(tx.conn(), username, now).await?;
                let n = store::revoke_certs(tx.conn(), &RevokeTarget::User(username), now).await?;
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
        // The CA keys as the database has them, not this replica's keyring: a key another
        // replica rotated in signs certificates this one may be asked to revoke, and a
        // serial whose key is unknown would be left out of the KRL without a word.
        let ca_keys = self.core.store.ca_keys().await?;
        // The generation date is when the revocation set last changed, so an unchanged set
        // encodes to the same bytes and nodes that refresh rewrite nothing.
        let mut krl = KrlBuilder::new(version, changed_at, "portcullis");
        for (serial, ca_fp) in self.core.store.revoked_unexpired(now.saturating_sub(KRL_AFTER_EXPIRY)).await? {
            let ca_key = ca_keys
                .iter()
                .find(|r| r.fingerprint == ca_fp)
                .and_then(|r| PublicKey::from_openssh(&r.public_key).ok());
            if let Some(ca_key) = ca_key {
                krl.revoke_serial(ca_key.key_data(), serial);
            }
        }
        for line in self.core.store.revoked_keys().await? {
            if let Ok(key) = PublicKey::from_openssh(&line) {
                // Whole keys, not their SHA-256: OpenSSH before 7.9 cannot load a KRL
                // that revokes by hash, and then refuses every public key.
                krl.revoke_key(key.key_data());
            }
        }
        let bytes = Arc::new(krl.encode());
        *self.krl_cache.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(CachedKrl { version, built_at: now, bytes: Arc::clone(&bytes) });
        Ok(bytes)
    }
}
