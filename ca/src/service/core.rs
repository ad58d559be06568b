//! What every CA service shares, and nothing else: the store, the clock, the CA keys,
//! the policy, the counters `/metrics` reports, the tally of unauthenticated refusals and
//! the default agent. Every service (see `service/mod.rs`) holds an `Arc<Core>` beside
//! its own state.

use super::metrics::Counters;
use crate::audit::{self, AuditEvent, SYSTEM_ACTOR};
use crate::clock::Clock;
use crate::error::CaError;
use crate::keys::{self, KeyAlgorithm, KeyPurpose, Keyring};
use crate::store::{self, CaKeyRow, Store};
use portcullis_policies::proof::Proof;
use portcullis_policies::{Device, Grant, Policy, PolicySummary, Purpose, diff};
use portcullis_proto::NodeRecord;
use portcullis_proto::refusals::{RefusalTally, Verdict};
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The shared core of the CA's services.
pub struct Core {
    pub(super) store: Store,
    clock: Arc<dyn Clock>,
    /// Opens the CA keys, sealed secrets and the recordings' master key.
    pub(super) passphrase: SecretString,
    /// The algorithm of keys generated here (first start, rotation).
    pub(super) key_algorithm: KeyAlgorithm,
    keys: RwLock<Arc<Keyring>>,
    policy: RwLock<Arc<Policy>>,
    pub(super) policy_dir: PathBuf,
    /// How far `valid_after` is back-dated, in seconds.
    pub(super) clock_skew: u64,
    /// What `/metrics` reports (counts only).
    pub(super) counters: Counters,
    /// Unauthenticated refusals: recorded once per key and window, then counted.
    refusals: Mutex<RefusalTally>,
    /// The edge agent that serves devices whose record names none (the all-in-one's
    /// built-in agent); see [`Core::device`].
    pub(super) default_agent: Option<String>,
    /// A published policy this replica could not follow, by digest and a hash of its
    /// files (see [`Core::follow_policy_changes`]).
    policy_declined: Mutex<Option<(String, u64)>>,
}

/// What [`Core::open`] needs, already validated.
pub(super) struct CoreConfig {
    pub database_url: String,
    pub policy_dir: PathBuf,
    pub passphrase: SecretString,
    pub key_algorithm: KeyAlgorithm,
    pub clock_skew: Duration,
    pub refusal_summary_every: Duration,
    pub default_agent: Option<String>,
    pub key_record: Option<PathBuf>,
}

impl Core {
    /// Opens the database, creates any missing CA key, loads the policy, and records
    /// what it did in the audit log.
    pub(super) async fn open(config: CoreConfig, clock: Arc<dyn Clock>) -> Result<Core, CaError> {
        let files = crate::policy_files::read_policy_dir(&config.policy_dir)?;
        let local = crate::policy_files::parse_policy(&files.sources)?;
        let store = Store::open(&config.database_url).await?;
        // The policy in force is the one last loaded by any replica. This replica's files
        // replace it only when changed since it came into force (an edit, then a
        // restart); older ones (a replica restarted with files from before another's
        // reload) would silently undo that reload, so the replica follows it instead.
        let edited_since = |published: &store::PublishedPolicy| {
            // A listing change counts only when it changed which files there are (not an
            // editor's swap file beside them).
            let names = |sources: &[(String, String)]| sources.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
            let renamed = published.sources.as_deref().is_none_or(|s| names(s) != names(&files.sources));
            files.modified >= published.loaded_at || (renamed && files.listing_modified >= published.loaded_at)
        };
        let (policy, sources) = match store.published_policy().await? {
            Some(published) if published.digest != local.digest() && !edited_since(&published) => {
                match published_policy(&published) {
                    Some(policy) => {
                        tracing::warn!(
                            dir = %config.policy_dir.display(),
                            in_force = %published.digest,
                            "the policy files differ from the policy in force, which is newer; following it (reload \
                             this replica to publish its files instead)"
                        );
                        (policy, published.sources.unwrap_or_default())
                    }
                    None => (local, files.sources),
                }
            }
            _ => (local, files.sources),
        };
        let now = clock.now_unix();
        let mut keyring = Keyring::load(&store, &config.passphrase).await?;
        if let Some(record) = &config.key_record {
            refuse_a_new_ca_in_place_of_a_known_one(record, &keyring)?;
        }
        for purpose in KeyPurpose::ALL {
            if keyring.has_active(purpose) {
                continue;
            }
            let row =
                keys::generate(purpose, config.key_algorithm, &config.passphrase, keys::state::ACTIVE, now).await?;
            // Another replica starting at the same instant may win: the database allows
            // one active key per purpose (migration 0012), so the loser's insert fails
            // and it uses the winner's key.
            match save_generated_key(&store, &row, SYSTEM_ACTOR, now).await {
                Ok(()) => tracing::info!(purpose = %purpose, fingerprint = %row.fingerprint, "generated CA key"),
                Err(e) => {
                    keyring = Keyring::load(&store, &config.passphrase).await?;
                    if !keyring.has_active(purpose) {
                        return Err(e);
                    }
                    tracing::info!(purpose = %purpose, "another replica generated the CA key first; using it");
                    continue;
                }
            }
            keyring = Keyring::load(&store, &config.passphrase).await?;
        }
        if let Some(record) = &config.key_record {
            record_keys(record, &keyring);
        }
        let core = Core {
            store,
            clock,
            passphrase: config.passphrase,
            key_algorithm: config.key_algorithm,
            keys: RwLock::new(Arc::new(keyring)),
            policy: RwLock::new(Arc::new(Policy::empty())),
            policy_dir: config.policy_dir,
            clock_skew: config.clock_skew.as_secs(),
            counters: Counters::default(),
            refusals: Mutex::new(RefusalTally::new(config.refusal_summary_every.as_secs())),
            default_agent: config.default_agent,
            policy_declined: Mutex::new(None),
        };
        core.install_policy(policy, &sources, SYSTEM_ACTOR).await?;
        Ok(core)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The policy's view of a node as this deployment reaches it: a record that names
    /// no agent is served by the default agent, when there is one.
    pub(super) fn device(&self, node: &NodeRecord) -> Device {
        let mut device = super::device::device_of(node);
        if device.agent.is_none() {
            device.agent = self.default_agent.clone();
        }
        device
    }

    /// Whether `grant`'s permission holds for what happened on the device called `name`
    /// from `since` on (a session opened, a recording started then); see
    /// `Grant::covers`. A device no longer enrolled, or whose name was registered again
    /// after `since` — another machine under the old name — is covered only by a grant
    /// that holds everywhere: the lab's new `db1` does not open prod's old `db1`.
    pub(super) async fn covers<P: portcullis_policies::proof::Proof>(
        &self,
        grant: &portcullis_policies::Grant<P>,
        name: &str,
        since: u64,
    ) -> Result<bool, CaError> {
        Ok(self.covered_from(grant, name).await?.is_some_and(|from| from <= since))
    }

    /// [`Core::covers`] for a listing: the `items` whose device and start (`place`) the
    /// grant covers, in order. Each device's record is read once.
    pub(super) async fn covered<P: portcullis_policies::proof::Proof, T>(
        &self,
        grant: &portcullis_policies::Grant<P>,
        items: Vec<T>,
        place: impl Fn(&T) -> (&str, u64),
    ) -> Result<Vec<T>, CaError> {
        if grant.covers_everything() {
            return Ok(items);
        }
        let mut seen = std::collections::HashMap::new();
        let mut kept = Vec::with_capacity(items.len());
        for item in items {
            let (name, since) = place(&item);
            if self.covers_each(grant, &mut seen, name, since).await? {
                kept.push(item);
            }
        }
        Ok(kept)
    }

    /// [`Core::covers`] for many things at once: each device's record is read once, its
    /// answer kept in `seen`.
    pub(super) async fn covers_each<P: portcullis_policies::proof::Proof>(
        &self,
        grant: &portcullis_policies::Grant<P>,
        seen: &mut std::collections::HashMap<String, Option<u64>>,
        name: &str,
        since: u64,
    ) -> Result<bool, CaError> {
        let from = match seen.get(name) {
            Some(known) => *known,
            None => {
                let known = self.covered_from(grant, name).await?;
                seen.insert(name.to_owned(), known);
                known
            }
        };
        Ok(from.is_some_and(|from| from <= since))
    }

    /// From when `grant`'s permission holds on the device called `name`: the time its
    /// current record was registered, if the grant covers it (0 for a grant that holds
    /// everywhere); `None` when it does not.
    async fn covered_from<P: portcullis_policies::proof::Proof>(
        &self,
        grant: &portcullis_policies::Grant<P>,
        name: &str,
    ) -> Result<Option<u64>, CaError> {
        if grant.covers_everything() {
            return Ok(Some(0));
        }
        let node = self.store.node_registered(name).await?;
        Ok(node.filter(|(node, _)| grant.covers(&self.device(node))).map(|(_, registered_at)| registered_at))
    }

    /// `/readyz`: whether this replica can serve — the database answers within 2 s and
    /// every purpose has an active CA key. Each check by name, with `ok` or why not.
    pub async fn readiness(&self) -> (bool, Vec<(&'static str, String)>) {
        let database = match tokio::time::timeout(Duration::from_secs(2), self.store.ping()).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => format!("failing: {}", e.unavailable().map_or("error", |_| "unavailable")),
            Err(_) => "failing: no answer within 2 s".to_owned(),
        };
        let keyring = self.keyring();
        let missing: Vec<&str> =
            KeyPurpose::ALL.iter().filter(|p| !keyring.has_active(**p)).map(|p| p.as_str()).collect();
        let keys = if missing.is_empty() { "ok".to_owned() } else { format!("no active key: {}", missing.join(", ")) };
        let checks = vec![("database", database), ("ca_keys", keys)];
        (checks.iter().all(|(_, v)| v == "ok"), checks)
    }

    pub fn now(&self) -> u64 {
        self.clock.now_unix()
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().map(|p| Arc::clone(&p)).unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    pub fn keyring(&self) -> Arc<Keyring> {
        self.keys.read().map(|k| Arc::clone(&k)).unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    pub(super) async fn reload_keys(&self) -> Result<(), CaError> {
        let keyring = Keyring::load(&self.store, &self.passphrase).await?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keyring);
        Ok(())
    }

    /// Reloads the keyring when the database's CA keys are not the ones it holds: another
    /// replica rotated, activated or retired one. Until then this replica would sign with
    /// a key that is no longer active and publish a trusted set that is out of date.
    pub(super) async fn follow_key_changes(&self) -> Result<(), CaError> {
        let rows = self.store.ca_keys().await?;
        let held = self.keyring();
        let same = rows.len() == held.rows().len()
            && rows.iter().zip(held.rows()).all(|(a, b)| a.fingerprint == b.fingerprint && a.state == b.state);
        if !same {
            self.reload_keys().await?;
        }
        Ok(())
    }

    /// Public keys of `purpose` that verifiers must trust, one OpenSSH line each.
    pub fn trusted_keys(&self, purpose: KeyPurpose) -> String {
        let keyring = self.keyring();
        keyring.trusted(purpose).iter().map(|k| format!("{k}\n")).collect()
    }

    /// Swaps in a validated policy and audits what changed relative to the last one.
    pub(super) async fn install_policy(
        &self,
        policy: Policy,
        sources: &[(String, String)],
        actor: &str,
    ) -> Result<portcullis_policies::PolicyDiff, CaError> {
        let now = self.now();
        let summary = policy.summary();
        let digest = policy.digest();
        let previous = self.store.policy_state().await?;
        let old_summary: Option<(String, PolicySummary)> =
            previous.and_then(|(d, json)| serde_json::from_str(&json).ok().map(|s| (d, s)));
        let summary_json = serde_json::to_string(&summary).map_err(|_| CaError::Internal("policy summary".into()))?;
        let changes = match &old_summary {
            Some((_, old)) => diff(old, &summary),
            None => diff(&PolicySummary::default(), &summary),
        };
        let mut tx = self.store.begin().await?;
        audit::record(tx.conn(), now, &AuditEvent::PolicyLoaded { actor: actor.to_owned(), digest: digest.clone() })
            .await?;
        if let Some((old_digest, _)) = &old_summary
            && *old_digest != digest
        {
            audit::record(
                tx.conn(),
                now,
                &AuditEvent::PolicyChanged {
                    actor: actor.to_owned(),
                    digest_before: old_digest.clone(),
                    digest_after: digest.clone(),
                    added: changes.added.clone(),
                    removed: changes.removed.clone(),
                    changed: changes.changed.clone(),
                    fields: changes.fields.clone(),
                },
            )
            .await?;
        }
        store::save_policy_state(tx.conn(), &digest, &summary_json, sources, now).await?;
        tx.commit().await?;
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        tracing::info!(%digest, "policy loaded");
        Ok(changes)
    }

    /// Follows a policy another replica loaded (housekeeping, every few seconds): each
    /// replica reads its own policy directory, and a reload publishes what it read to
    /// all through the database, which the reloading replica audited.
    pub(super) async fn follow_policy_changes(&self) -> Result<(), CaError> {
        let Some(digest) = self.store.policy_digest().await? else { return Ok(()) };
        if digest == self.policy().digest() {
            return Ok(());
        }
        let Some(published) = self.store.published_policy().await? else { return Ok(()) };
        // What was published: the digest and the files (an upgraded replica republishes
        // a digest an older one left without its files).
        let seen = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            published.sources.hash(&mut h);
            (published.digest.clone(), h.finish())
        };
        let mut declined = self.policy_declined.lock().unwrap_or_else(|e| e.into_inner());
        if declined.as_ref() == Some(&seen) {
            return Ok(());
        }
        match published_policy(&published) {
            Some(policy) => {
                tracing::info!(digest = %published.digest, "following the policy another replica loaded");
                *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
            }
            // Tried again only once something else is published (warned once, not at
            // every tick).
            None => *declined = Some(seen),
        }
        Ok(())
    }

    /// Records an event that stands alone (a refusal, a failure): nothing else changes
    /// with it, so it gets a transaction of its own.
    pub(super) async fn audit_alone(&self, event: AuditEvent) -> Result<(), CaError> {
        let mut tx = self.store.begin().await?;
        audit::record(tx.conn(), self.now(), &event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Audits a refusal of an unauthenticated caller: the first of its (source, reason,
    /// user) in a window as `event` itself, repeats only counted into the window's
    /// `refusals_summarized` record (see `portcullis_proto::refusals`).
    pub(super) async fn audit_refusal(
        &self,
        source: &str,
        reason: &str,
        user: &str,
        event: AuditEvent,
    ) -> Result<(), CaError> {
        self.flush_refusals().await?;
        let key = format!("{}:{reason}", event.name());
        self.counters.refusals.inc(&[("reason", &key)]);
        // Every refusal is a log line (for fail2ban or a SIEM), even the ones only counted
        // in the audit trail; never with the typed user name (it may be a password).
        tracing::warn!(target: "portcullis_ca::refusal", client_ip = %source, reason = %key, "refused an unauthenticated request");
        let verdict = self.refusals.lock().map_err(|_| CaError::Internal("refusal tally".into()))?.note(
            self.now(),
            source,
            &key,
            user,
        );
        match verdict {
            Verdict::Record => self.audit_alone(event).await,
            Verdict::Counted => Ok(()),
        }
    }

    /// Writes the summary of a refusal window that has ended. Called on every refusal,
    /// every bastion heartbeat and by the server's timer, so a quiet CA reports too.
    pub async fn flush_refusals(&self) -> Result<(), CaError> {
        let due = self.refusals.lock().map_err(|_| CaError::Internal("refusal tally".into()))?.take_due(self.now());
        self.write_refusals(due).await
    }

    /// Writes what the open refusal window counted so far, ended or not: at shutdown,
    /// where it would otherwise be lost with the process.
    pub async fn flush_refusals_now(&self) -> Result<(), CaError> {
        let so_far = self.refusals.lock().map_err(|_| CaError::Internal("refusal tally".into()))?.take(self.now());
        self.write_refusals(so_far).await
    }

    async fn write_refusals(&self, summary: Option<portcullis_proto::refusals::RefusalSummary>) -> Result<(), CaError> {
        let Some(s) = summary else { return Ok(()) };
        self.audit_alone(AuditEvent::RefusalsSummarized {
            origin: "ca".to_owned(),
            window_start: s.window_start,
            window_end: s.window_end,
            counts: s.counts,
            overflow: s.overflow,
        })
        .await
    }

    /// Whether a rule with purpose `inventory_enrichment` covers the node (and so its
    /// principals file lists the discovery login).
    pub(super) fn discovery_allowed(&self, node: &NodeRecord) -> Option<String> {
        let device = self.device(node);
        self.policy().match_rule(Purpose::InventoryEnrichment, &device).ok().map(|r| r.name().to_owned())
    }

    /// Bastions heard from within a lease's lifetime, each with the agents it reported
    /// connected in that heartbeat.
    pub(super) async fn live_bastions(&self) -> Result<Vec<store::ServiceRow>, CaError> {
        let cutoff = self.now().saturating_sub(portcullis_proto::bastion::LEASE_TTL_SECS);
        let mut bastions = self.store.services(portcullis_proto::bastion::ServiceKind::Bastion.as_str()).await?;
        bastions.retain(|b| b.last_seen.is_some_and(|t| t >= cutoff));
        Ok(bastions)
    }

    /// The proof an administrative operation needs.
    pub fn authorize<P: Proof>(&self, caller: &super::Caller) -> Result<Grant<P>, CaError> {
        self.policy().authorize::<P>(&caller.identity).map_err(CaError::Denied)
    }
}

/// Stores a newly generated CA key together with its audit record.
pub(super) async fn save_generated_key(store: &Store, row: &CaKeyRow, actor: &str, now: u64) -> Result<(), CaError> {
    let mut tx = store.begin().await?;
    store::insert_ca_key(tx.conn(), row).await?;
    let event = AuditEvent::CaKeyGenerated {
        actor: actor.to_owned(),
        purpose: row.purpose.clone(),
        algorithm: row.algorithm.clone(),
        fingerprint: row.fingerprint.clone(),
        state: row.state.clone(),
    };
    audit::record(tx.conn(), now, &event).await?;
    tx.commit().await?;
    Ok(())
}

/// The policy another replica published, as this replica reads it; `None` (and a
/// warning) when it cannot be followed, during an upgrade: published by a CA older than
/// this one (no files; or the files of an earlier reload, left under the new digest,
/// since an older CA writes no files), or files this version reads otherwise (a newer
/// CA's policy). The replica then keeps its own.
fn published_policy(published: &store::PublishedPolicy) -> Option<Policy> {
    let Some(sources) = &published.sources else {
        tracing::warn!(in_force = %published.digest, "the policy in force was published without its files (an older CA); keeping this replica's");
        return None;
    };
    match crate::policy_files::parse_policy(sources) {
        Ok(policy) if policy.digest() == published.digest => Some(policy),
        _ => {
            tracing::warn!(in_force = %published.digest, "this replica reads the policy in force otherwise; keeping its own");
            None
        }
    }
}

/// A database that holds none of the CA keys this CA has signed with (recorded at each
/// start) is not this CA's: a mistyped or emptied `database_url` (another PostgreSQL
/// database, a SQLite path not there yet) would start a new CA — new keys no node
/// trusts, an empty audit log, a new first administrator — and another CA's database
/// would take this one's place, without a word. Keys in any state count (a rotation
/// keeps the old ones as previous or retired rows).
fn refuse_a_new_ca_in_place_of_a_known_one(record: &Path, keyring: &Keyring) -> Result<(), CaError> {
    let known = match std::fs::read_to_string(record) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CaError::Config(format!("cannot read {}: {e}", record.display()))),
    };
    let recorded: Vec<(&str, &str)> = known.lines().filter_map(|l| l.split_once(' ')).collect();
    if recorded.is_empty() || recorded.iter().any(|(_, f)| keyring.rows().iter().any(|k| k.fingerprint == *f)) {
        return Ok(());
    }
    let user_key = recorded.iter().find(|(p, _)| *p == "user").map_or("(unknown)", |(_, f)| *f);
    let holds = if keyring.rows().is_empty() { "no CA keys" } else { "another CA's keys" };
    Err(CaError::Config(format!(
        "the database holds {holds}, but this CA has signed with user CA key {user_key} (recorded in {}): is \
         database_url the right database? Starting here would make or take another CA, which no node trusts as \
         this one. To start a new CA on purpose, delete that file",
        record.display()
    )))
}

/// Writes which keys are active now (`PURPOSE FINGERPRINT` lines), for
/// [`refuse_a_new_ca_in_place_of_a_known_one`] at the next start. Public fingerprints
/// only; a failure to write is logged, not fatal.
fn record_keys(record: &Path, keyring: &Keyring) {
    let lines: String = keyring
        .rows()
        .iter()
        .filter(|k| k.state == keys::state::ACTIVE)
        .map(|k| format!("{} {}\n", k.purpose, k.fingerprint))
        .collect();
    if let Err(e) = crate::fsutil::write_atomic(record, lines.as_bytes(), 0o644) {
        tracing::warn!(path = %record.display(), error = %e, "cannot record the CA keys in use");
    }
}
