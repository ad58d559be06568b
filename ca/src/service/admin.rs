//! The administration service: local users, CA keys, the policy and the audit trail.
//! Each operation takes the policy's `Grant` for its permission as proof that the caller
//! was authorized; the grant's holder is the audited actor. The target preview
//! (`preview.rs`) is its too.

use super::core::Core;
use super::pve::Proxmox;
use crate::audit::{self, AuditEvent, GroupsChange};
use crate::error::CaError;
use crate::identity::hash_password;
use crate::keys::{self, KeyPurpose, state};
use crate::policy_files::{parse_policy, read_policy_dir};
use crate::store::{self, NewPassword, Store};
use portcullis_policies::{Grant, Identity, USER_NAME_RULE, UserSource, parse_account, proof, valid_user_name};
use portcullis_proto::console::{PolicyChangeRecord, PolicyFieldChange};
use portcullis_proto::{AuditRecord, AuditVerifyResponse, CaKeyInfo, PolicyReloadResponse, UserInfo};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;

/// Login names as OpenSSH and the policy accept them; anything else is refused up front.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
}

fn check_name(kind: &str, name: &str) -> Result<(), CaError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(CaError::BadRequest(format!("{kind} names use letters, digits, '_', '-', '.', '@' (at most 64)")))
    }
}

const MIN_PASSWORD_LEN: usize = 12;
/// Longer than any passphrase a person types; bounds the hashing input.
const MAX_PASSWORD_BYTES: usize = 1024;

/// What every password set here must be: long enough to resist guessing within the
/// sign-in back-off, short enough to hash in bounded time.
pub(super) fn check_password_rule(password: &SecretString) -> Result<(), CaError> {
    let password = password.expose_secret();
    if password.chars().count() < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_BYTES {
        return Err(CaError::BadRequest(format!(
            "passwords need at least {MIN_PASSWORD_LEN} characters (and at most {MAX_PASSWORD_BYTES} bytes)"
        )));
    }
    Ok(())
}

/// Checks a new password against the rule and hashes it (off the async threads).
pub(super) async fn hash_new_password(password: &SecretString) -> Result<String, CaError> {
    check_password_rule(password)?;
    let pw = password.clone();
    Ok(tokio::task::spawn_blocking(move || hash_password(pw.expose_secret()))
        .await
        .map_err(|_| CaError::Internal("hashing task".into()))??)
}

/// Ends everything an account holds (disabled, or its name released): its API sessions,
/// and its live certificates, which go into the KRL.
/// Ends `account`'s API sessions and revokes its live certificates (audited as `actor`'s
/// revocation): a user disabled, a name released or left behind by a rename.
pub(super) async fn end_sessions_and_certificates(
    tx: &mut store::WriteTx<'_>,
    actor: &str,
    account: &str,
    now: u64,
) -> Result<(), CaError> {
    // Sessions first: a certificate being issued in one of them is then either refused
    // or already stored when the certificates are revoked (see `store::live_sessions_among`).
    store::revoke_user_sessions(tx.conn(), account, now).await?;
    let n = store::revoke_certs(tx.conn(), &store::RevokeTarget::User(account), now).await?;
    if n > 0 {
        let target = format!("user:{}", crate::audit::sanitize(account));
        super::revocation::record_revocation(tx.conn(), now, actor, target, n, false).await?;
    }
    Ok(())
}

/// Records one audit search reads at most (a filter matching little cannot make a
/// request walk the whole log).
const AUDIT_SCAN_LIMIT: usize = 50_000;

/// What `GET /v1/admin/audit` asks for: records after or before a sequence number (the
/// page cursor), in a time range `[since, until)`, of one event, naming a user or device.
#[derive(Default)]
pub struct AuditFilter {
    pub after: u64,
    pub before: Option<u64>,
    pub newest_first: bool,
    pub event: Option<String>,
    pub user: Option<String>,
    pub device: Option<String>,
    pub since: u64,
    pub until: Option<u64>,
    pub limit: u32,
}

/// What the admin API shows of a CA key (never the encrypted private part).
fn key_info(row: &store::CaKeyRow) -> portcullis_proto::CaKeyInfo {
    portcullis_proto::CaKeyInfo {
        purpose: row.purpose.clone(),
        state: row.state.clone(),
        algorithm: row.algorithm.clone(),
        fingerprint: row.fingerprint.clone(),
        public_key: row.public_key.clone(),
        created_at: row.created_at,
    }
}

/// The administration service. It owns no state of its own: it changes what the core
/// and the store hold, and asks the Proxmox service for guests (for the preview).
pub struct Admin {
    pub(super) core: Arc<Core>,
    pub(super) proxmox: Arc<Proxmox>,
}

impl Admin {
    pub(super) fn new(core: Arc<Core>, proxmox: Arc<Proxmox>) -> Admin {
        Admin { core, proxmox }
    }

    pub async fn users(&self, _grant: &Grant<proof::UsersManage>) -> Result<Vec<UserInfo>, CaError> {
        Ok(self
            .core
            .store
            .users()
            .await?
            .into_iter()
            .map(|u| UserInfo { username: u.username, groups: u.groups, disabled: u.disabled })
            .collect())
    }

    pub async fn add_user(
        &self,
        grant: &Grant<proof::UsersManage>,
        username: &str,
        groups: &[String],
        password: Option<&SecretString>,
    ) -> Result<(), CaError> {
        if !valid_user_name(username) {
            return Err(CaError::BadRequest(format!("local user names use {USER_NAME_RULE}")));
        }
        for g in groups {
            check_name("group", g)?;
        }
        self.within_callers_permissions(grant, username, groups)?;
        let hash = match password {
            Some(pw) => Some(hash_new_password(pw).await?),
            None => None,
        };
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        let password = hash.as_deref().map(|hash| NewPassword { hash, one_time: false });
        if !store::insert_user(tx.conn(), username, password, groups, now).await? {
            return Err(CaError::Conflict("a user with that name already exists".into()));
        }
        let added = GroupsChange { old: Vec::new(), new: groups.to_vec() };
        self.audit_user_groups(&mut tx, grant, username, "added", Some(added)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Managing users is never a way to more control of Portcullis: the caller may give
    /// `groups` to `username`, or act on that user at all, only if the user would hold
    /// no administrative permission the caller does not (by the current policy, bindings
    /// by group and by name; access to devices is what user managers hand out). Until 2026-12-05 a `users.manage` holder could add themselves to the
    /// administrators' group, or reset an administrator's password (found in review).
    fn within_callers_permissions(
        &self,
        grant: &Grant<proof::UsersManage>,
        username: &str,
        groups: &[String],
    ) -> Result<(), CaError> {
        let who = Identity {
            username: username.to_owned(),
            groups: groups.iter().cloned().collect(),
            source: UserSource::Local.to_string(),
        };
        if grant.holds_all(&self.core.policy().held_by(&who)) {
            Ok(())
        } else {
            Err(CaError::Forbidden("that user would hold permissions you do not hold; ask someone who holds them"))
        }
    }

    /// [`Self::within_callers_permissions`] for a user as they are now.
    async fn manageable(&self, grant: &Grant<proof::UsersManage>, username: &str) -> Result<(), CaError> {
        let Some(user) = self.core.store.user(username).await? else { return Err(CaError::NotFound("user")) };
        self.within_callers_permissions(grant, username, &user.groups)
    }

    async fn audit_user(
        &self,
        tx: &mut store::WriteTx<'_>,
        grant: &Grant<proof::UsersManage>,
        username: &str,
        change: &'static str,
    ) -> Result<(), CaError> {
        self.audit_user_groups(tx, grant, username, change, None).await
    }

    async fn audit_user_groups(
        &self,
        tx: &mut store::WriteTx<'_>,
        grant: &Grant<proof::UsersManage>,
        username: &str,
        change: &'static str,
        groups: Option<GroupsChange>,
    ) -> Result<(), CaError> {
        let event = AuditEvent::UserChanged {
            actor: grant.username().to_owned(),
            username: username.to_owned(),
            change,
            groups,
        };
        audit::record(tx.conn(), self.core.now(), &event).await?;
        Ok(())
    }

    /// Disabling also ends the user's API sessions and revokes their live certificates.
    pub async fn set_user_disabled(
        &self,
        grant: &Grant<proof::UsersManage>,
        username: &str,
        disabled: bool,
    ) -> Result<(), CaError> {
        self.manageable(grant, username).await?;
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        if !store::set_user_disabled(tx.conn(), username, disabled, now).await? {
            return Err(CaError::NotFound("user"));
        }
        if disabled {
            end_sessions_and_certificates(&mut tx, grant.username(), username, now).await?;
        }
        self.audit_user(&mut tx, grant, username, if disabled { "disabled" } else { "enabled" }).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Frees a directory or IdP account name (`ldap:alice`, `oidc:alice`) for the next
    /// subject that signs in with it — after a directory entry was recreated, or an IdP
    /// account renamed, on purpose. What the previous holder had under the name ends
    /// with it: API sessions, and live certificates (into the KRL).
    pub async fn release_account(&self, grant: &Grant<proof::UsersManage>, account: &str) -> Result<(), CaError> {
        match parse_account(account) {
            Some((UserSource::Ldap | UserSource::Oidc, _)) => {}
            _ => {
                return Err(CaError::BadRequest(
                    "only directory and identity-provider accounts (ldap:NAME, oidc:NAME) are held for a subject"
                        .into(),
                ));
            }
        }
        // Releasing ends the holder's sessions and certificates, and hands the name (and
        // every binding by name) to the next subject that signs in with it: only for an
        // account that holds nothing the caller does not, like any other change to a user.
        let groups = self.core.store.session_groups(account).await?;
        self.within_callers_permissions(grant, account, &groups)?;
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        if !store::release_account(tx.conn(), account).await? {
            return Err(CaError::NotFound("account held for a subject"));
        }
        end_sessions_and_certificates(&mut tx, grant.username(), account, now).await?;
        self.audit_user(&mut tx, grant, account, "released").await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_user_groups(
        &self,
        grant: &Grant<proof::UsersManage>,
        username: &str,
        groups: &[String],
    ) -> Result<(), CaError> {
        for g in groups {
            check_name("group", g)?;
        }
        self.manageable(grant, username).await?;
        self.within_callers_permissions(grant, username, groups)?;
        let mut tx = self.core.store.begin().await?;
        let Some(old) = store::set_user_groups(tx.conn(), username, groups, self.core.now()).await? else {
            return Err(CaError::NotFound("user"));
        };
        let change = GroupsChange { old, new: groups.to_vec() };
        self.audit_user_groups(&mut tx, grant, username, "groups_set", Some(change)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets a local user's password; a `one_time` one (a reset for someone who forgot
    /// theirs) opens no session until its user replaces it at their next sign-in.
    pub async fn set_user_password(
        &self,
        grant: &Grant<proof::UsersManage>,
        username: &str,
        password: &SecretString,
        one_time: bool,
    ) -> Result<(), CaError> {
        self.manageable(grant, username).await?;
        let hash = hash_new_password(password).await?;
        let mut tx = self.core.store.begin().await?;
        if !store::set_user_password(tx.conn(), username, NewPassword { hash: &hash, one_time }, self.core.now())
            .await?
        {
            return Err(CaError::NotFound("user"));
        }
        let change = if one_time {
            // A reset for someone who lost control of their password: their sessions end.
            store::revoke_user_sessions(tx.conn(), username, self.core.now()).await?;
            "one_time_password_set"
        } else {
            "password_set"
        };
        self.audit_user(&mut tx, grant, username, change).await?;
        tx.commit().await?;
        Ok(())
    }

    pub fn ca_keys(&self) -> Vec<CaKeyInfo> {
        self.core.keyring().rows().iter().map(key_info).collect()
    }

    /// Step 1 of a rotation: a new key is generated and published (trusted) but does not
    /// sign until `activate_ca_key`, so nodes can learn it first.
    pub async fn rotate_ca_key(
        &self,
        grant: &Grant<proof::CaManage>,
        purpose: KeyPurpose,
    ) -> Result<CaKeyInfo, CaError> {
        if self.core.keyring().rows().iter().any(|r| r.purpose == purpose.as_str() && r.state == state::PENDING) {
            return Err(CaError::Conflict("a pending key exists already; activate or retire it first".into()));
        }
        let now = self.core.now();
        let row = keys::generate(purpose, self.core.key_algorithm, &self.core.passphrase, state::PENDING, now).await?;
        super::core::save_generated_key(&self.core.store, &row, grant.username(), now).await?;
        self.core.reload_keys().await?;
        Ok(key_info(&row))
    }

    /// Step 2: the pending key signs from now on; the old active key stays trusted.
    pub async fn activate_ca_key(&self, grant: &Grant<proof::CaManage>, purpose: KeyPurpose) -> Result<(), CaError> {
        let keyring = self.core.keyring();
        let pending: Vec<_> =
            keyring.rows().iter().filter(|r| r.purpose == purpose.as_str() && r.state == state::PENDING).collect();
        let [new] = pending.as_slice() else {
            return Err(CaError::Conflict("no pending key to activate; run rotate first".into()));
        };
        let previous: Vec<String> = keyring
            .rows()
            .iter()
            .filter(|r| r.purpose == purpose.as_str() && r.state == state::ACTIVE)
            .map(|r| r.fingerprint.clone())
            .collect();
        let mut tx = self.core.store.begin().await?;
        store::move_ca_keys(tx.conn(), purpose.as_str(), state::ACTIVE, state::PREVIOUS).await?;
        // The keyring read above may be older than the database (a retry whose first try
        // committed, another replica's change): unless the key is still pending, nothing
        // changes — demoting the active key alone would leave none to sign with.
        if !store::set_ca_key_state(tx.conn(), &new.fingerprint, state::PENDING, state::ACTIVE).await? {
            drop(tx);
            self.core.reload_keys().await?;
            return Err(CaError::Conflict("the key is no longer pending (activated or retired meanwhile)".into()));
        }
        // A revoked key never signs: every node's KRL names it, so sshd would refuse
        // every certificate it signed. (The row is locked now, so a revocation on another
        // replica either committed already and is seen here, or waits and then finds the
        // key active and refuses.)
        if !store::revoked_among(tx.conn(), &[new.fingerprint.as_str()]).await?.is_empty() {
            drop(tx);
            return Err(CaError::Conflict(
                "the pending key is revoked and will never sign: retire it (admin ca-keys retire) and rotate again"
                    .into(),
            ));
        }
        audit::record(
            tx.conn(),
            self.core.now(),
            &AuditEvent::CaKeyRotated {
                actor: grant.username().to_owned(),
                purpose: purpose.as_str().to_owned(),
                activated: new.fingerprint.clone(),
                previous,
            },
        )
        .await?;
        tx.commit().await?;
        self.core.reload_keys().await
    }

    /// Step 3: stop trusting an old (or abandoned pending) key. The active key cannot be retired.
    pub async fn retire_ca_key(&self, grant: &Grant<proof::CaManage>, fingerprint: &str) -> Result<(), CaError> {
        let keyring = self.core.keyring();
        let row = keyring.rows().iter().find(|r| r.fingerprint == fingerprint).ok_or(CaError::NotFound("CA key"))?;
        if row.state != state::PREVIOUS && row.state != state::PENDING {
            return Err(CaError::Conflict(format!("a key in state {} cannot be retired", row.state)));
        }
        let mut tx = self.core.store.begin().await?;
        if !store::set_ca_key_state(tx.conn(), fingerprint, &row.state, state::RETIRED).await? {
            drop(tx);
            self.core.reload_keys().await?;
            return Err(CaError::Conflict(format!("the key is no longer {} (changed meanwhile)", row.state)));
        }
        audit::record(
            tx.conn(),
            self.core.now(),
            &AuditEvent::CaKeyRetired {
                actor: grant.username().to_owned(),
                purpose: row.purpose.clone(),
                fingerprint: fingerprint.to_owned(),
            },
        )
        .await?;
        tx.commit().await?;
        self.core.reload_keys().await
    }

    /// Re-reads the policy directory. An invalid policy is refused whole (and audited);
    /// the running policy stays in force.
    pub async fn reload_policy(&self, grant: &Grant<proof::PolicyManage>) -> Result<PolicyReloadResponse, CaError> {
        self.reload_policy_as(grant.username()).await
    }

    /// A reload asked for by the local operator (SIGHUP), who holds no API grant.
    pub async fn reload_policy_on_signal(&self) -> Result<PolicyReloadResponse, CaError> {
        self.reload_policy_as("operator:SIGHUP").await
    }

    async fn reload_policy_as(&self, actor: &str) -> Result<PolicyReloadResponse, CaError> {
        let read = read_policy_dir(&self.core.policy_dir);
        let (policy, sources) = match read.and_then(|files| Ok((parse_policy(&files.sources)?, files.sources))) {
            Ok(loaded) => loaded,
            Err(e) => {
                let errors = e.to_string().lines().count().saturating_sub(1).max(1);
                self.core.audit_alone(AuditEvent::PolicyRejected { actor: actor.to_owned(), errors }).await?;
                return Err(match e {
                    CaError::Config(msg) => CaError::BadRequest(msg),
                    other => other,
                });
            }
        };
        let before = self.core.policy().digest();
        let digest = policy.digest();
        let changes = self.core.install_policy(policy, &sources, actor).await?;
        Ok(PolicyReloadResponse {
            changed: before != digest,
            digest,
            added: changes.added,
            removed: changes.removed,
            modified: changes.changed,
        })
    }

    pub async fn audit_verify(&self, _grant: &Grant<proof::AuditRead>) -> Result<AuditVerifyResponse, CaError> {
        let check = self.core.store.verify_audit_chain().await?;
        Ok(AuditVerifyResponse {
            ok: check.first_bad_seq.is_none(),
            records: check.records,
            first_bad_seq: check.first_bad_seq,
            problem: check.problem,
        })
    }

    /// Audit records matching `filter`: event and time in the query, user and device by
    /// the payload's fields, scanning at most `AUDIT_SCAN_LIMIT` records per call.
    pub async fn audit_search(
        &self,
        _grant: &Grant<proof::AuditRead>,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRecord>, CaError> {
        search_audit(&self.core.store, filter).await
    }

    /// Policy reloads (those that changed something and those refused) and API-secret
    /// changes, newest first: who, when and what (for a secret its identity, TLS policy
    /// and fingerprint — never its value).
    pub async fn policy_history(&self, _grant: &Grant<proof::PolicyRead>) -> Result<Vec<PolicyChangeRecord>, CaError> {
        let mut out = Vec::new();
        for event in ["policy_changed", "policy_rejected", "secret_added", "secret_rotated", "secret_removed"] {
            let filter =
                AuditFilter { newest_first: true, event: Some(event.to_owned()), limit: 1000, ..Default::default() };
            out.extend(search_audit(&self.core.store, &filter).await?.into_iter().map(policy_change));
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.seq));
        out.truncate(1000);
        Ok(out)
    }

    pub async fn audit_records(
        &self,
        _grant: &Grant<proof::AuditRead>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, CaError> {
        Ok(self
            .core
            .store
            .audit_records(after, limit.clamp(1, 1000))
            .await?
            .into_iter()
            .map(|r| AuditRecord {
                seq: r.seq,
                at: r.at,
                event: r.event,
                payload: serde_json::from_str(&r.payload).unwrap_or(serde_json::Value::Null),
            })
            .collect())
    }
}

/// The search itself, for the views that show part of the audit trail under their own
/// permission (the policy history).
pub(super) async fn search_audit(store: &Store, filter: &AuditFilter) -> Result<Vec<AuditRecord>, CaError> {
    const PAGE: u32 = 500;
    let limit = usize::try_from(filter.limit.clamp(1, 1000)).unwrap_or(1000);
    let event = filter.event.as_deref().unwrap_or("");
    let mut from = if filter.newest_first { filter.before.unwrap_or(u64::MAX) } else { filter.after };
    let mut out = Vec::new();
    let mut scanned = 0usize;
    while out.len() < limit && scanned < AUDIT_SCAN_LIMIT {
        let until = filter.until.unwrap_or(u64::MAX);
        let page = store.audit_page(from, filter.newest_first, filter.since, until, event, PAGE).await?;
        let Some(last) = page.last() else { break };
        from = last.seq;
        scanned += page.len();
        let full = page.len() == PAGE as usize;
        for row in page {
            let payload: serde_json::Value = serde_json::from_str(&row.payload).unwrap_or(serde_json::Value::Null);
            let field_is = |names: &[&str], want: &str| {
                names.iter().any(|n| payload.get(*n).and_then(|v| v.as_str()) == Some(want))
            };
            if filter.user.as_deref().is_some_and(|u| !field_is(&["user", "username", "actor"], u))
                || filter.device.as_deref().is_some_and(|d| !field_is(&["device", "node"], d))
            {
                continue;
            }
            out.push(AuditRecord { seq: row.seq, at: row.at, event: row.event, payload });
            if out.len() == limit {
                break;
            }
        }
        if !full {
            break;
        }
    }
    Ok(out)
}

/// One history entry from a `policy_changed` or `secret_*` audit record.
fn policy_change(r: AuditRecord) -> PolicyChangeRecord {
    let text = |k: &str| r.payload.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    let list = |k: &str| -> Vec<String> {
        r.payload
            .get(k)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let mut change = PolicyChangeRecord {
        seq: r.seq,
        at: r.at,
        actor: text("actor"),
        digest_before: text("digest_before"),
        digest_after: text("digest_after"),
        added: list("added"),
        removed: list("removed"),
        changed: list("changed"),
        fields: r.payload.get("fields").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default(),
        rejected_errors: (r.event == "policy_rejected")
            .then(|| r.payload.get("errors").and_then(serde_json::Value::as_u64).unwrap_or(1)),
    };
    if r.event.starts_with("secret_") {
        let item = format!("secret:{}", text("name"));
        change.actor = text("by");
        change.fields = ["identity", "tls", "fingerprint"]
            .into_iter()
            .filter(|f| !text(f).is_empty())
            .map(|f| PolicyFieldChange { item: item.clone(), field: f.to_owned(), old: None, new: Some(text(f)) })
            .collect();
        match r.event.as_str() {
            "secret_added" => change.added.push(item),
            "secret_removed" => change.removed.push(item),
            _ => change.changed.push(item),
        }
    }
    change
}
