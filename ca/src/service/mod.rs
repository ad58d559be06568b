//! The CA as a service: one [`Ca`] value owns the store, keys, policy and clock, and
//! every API handler is a thin call into one of its methods.

mod admin;
mod auth;
mod bastion_events;
mod certs;
mod discovery;
mod enroll;
mod metrics;
pub mod permits;
mod preview;
mod pve;
mod recordings;
use metrics::Counters;
pub mod oidc;
mod services;
mod sessions;
mod writer;

pub use admin::AuditFilter;
pub use auth::{Caller, csrf_token_for, csrf_token_matches};
pub use certs::device_of;
pub use discovery::{DiscoverySettings, HardwareSummary};
pub use permits::{DiscoveryPermit, SessionPermit};
pub use pve::PveSettings;
pub use services::ServiceCaller;

/// 256 random bits as URL-safe text: generated passwords and passphrases.
pub fn random_secret() -> String {
    auth::random_token("")
}

use crate::admission::WorkLimit;
use crate::audit::{self, AuditEvent, SYSTEM_ACTOR};
use crate::clock::Clock;
use crate::error::CaError;
use crate::identity::{IdentitySource, LocalUsers, hash_password};
use crate::keys::{self, KeyAlgorithm, KeyPurpose, Keyring};
use crate::policy_files::load_policy_dir;
use crate::ratelimit::{LoginThrottle, RateLimiter};
use crate::store::{self, CaKeyRow, Store};
use portcullis_policies::{Policy, PolicySummary, diff};
use portcullis_proto::refusals::{RefusalTally, Verdict};
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Console tickets one user may ask for per minute (per replica): a person opens a few
/// consoles a minute; a script spraying tickets is stopped.
const TICKETS_PER_USER_PER_MINUTE: u32 = 20;

/// Everything the CA needs to start, already validated.
pub struct CaConfig {
    pub database_url: String,
    pub policy_dir: PathBuf,
    pub passphrase: SecretString,
    pub key_algorithm: KeyAlgorithm,
    /// How far `valid_after` is back-dated.
    pub clock_skew: Duration,
    /// Hard cap on any certificate's lifetime, whatever the policy says.
    pub max_cert_ttl: Duration,
    /// Lifetime of an API session (bearer token).
    pub session_ttl: Duration,
    /// Failed password sign-ins per user per hour, over all addresses, after which the
    /// addresses that failed for that user wait out the hour (see [`LoginThrottle`]).
    pub login_failures_per_user: u32,
    pub login_attempts_per_ip: u32,
    /// `SHA256:<base64>` of the API's TLS public key, baked into `enroll.sh`.
    pub tls_pin: String,
    /// The `portcullis-enroll` binary served to nodes (default: beside `portcullisd`).
    pub enroll_binary: Option<PathBuf>,
    /// Password sources asked after the local users (e.g. LDAP), in order.
    pub extra_sources: Vec<Arc<dyn IdentitySource>>,
    /// OpenID Connect single sign-on (browser and device flow), when configured.
    pub oidc: Option<crate::identity::oidc::OidcConfig>,
    /// The edge agent that serves devices whose record names none (the all-in-one's
    /// local agent). `None`: such devices cannot be reached through a bastion.
    pub default_agent: Option<String>,
    /// Hardware discovery (`[discovery]`); off by default.
    pub discovery: DiscoverySettings,
    /// Proxmox VE inventory (`[pve]`): runs only where a credential rule says so.
    pub pve: PveSettings,
    /// The window of unauthenticated refusals counted into one audit summary.
    pub refusal_summary_every: Duration,
    /// How long session recordings are kept.
    pub recording_retention: Duration,
}

impl CaConfig {
    pub fn new(database_url: String, policy_dir: PathBuf, passphrase: SecretString) -> Self {
        CaConfig {
            database_url,
            policy_dir,
            passphrase,
            key_algorithm: KeyAlgorithm::Ed25519,
            clock_skew: Duration::from_secs(60),
            max_cert_ttl: Duration::from_secs(8 * 3600),
            session_ttl: Duration::from_secs(12 * 3600),
            login_failures_per_user: 100,
            login_attempts_per_ip: 30,
            tls_pin: String::new(),
            enroll_binary: None,
            extra_sources: Vec::new(),
            oidc: None,
            default_agent: None,
            discovery: DiscoverySettings::default(),
            pve: PveSettings::default(),
            refusal_summary_every: Duration::from_secs(60),
            recording_retention: recordings::DEFAULT_RETENTION,
        }
    }
}

pub struct Ca {
    store: Store,
    recordings: recordings::Recordings,
    clock: Arc<dyn Clock>,
    passphrase: SecretString,
    key_algorithm: KeyAlgorithm,
    keys: RwLock<Arc<Keyring>>,
    policy: RwLock<Arc<Policy>>,
    policy_dir: PathBuf,
    /// Asked in order at password login; the first that knows the user decides.
    sources: Vec<Arc<dyn IdentitySource>>,
    /// The first of `sources`, also asked directly when a user replaces their password.
    local: LocalUsers,
    /// Where the first administrator's generated password was written, deleted once
    /// that user has replaced it (see [`Ca::forget_initial_password_when_replaced`]).
    initial_password_file: Mutex<Option<(String, PathBuf)>>,
    clock_skew: u64,
    max_cert_ttl: Duration,
    session_ttl: u64,
    login_throttle: LoginThrottle,
    ip_attempts: RateLimiter,
    /// Bounds on what anonymous callers can make us do (see [`crate::admission`]).
    password_work: Arc<WorkLimit>,
    directory_work: WorkLimit,
    idp_work: WorkLimit,
    /// Console tickets asked per user per minute.
    ticket_requests: RateLimiter,
    /// Unauthenticated refusals: recorded once per key and window, then counted.
    refusals: Mutex<RefusalTally>,
    /// What `/metrics` reports (counts only).
    counters: Counters,
    krl_cache: Mutex<Option<certs::CachedKrl>>,
    oidc: Option<crate::identity::oidc::Oidc>,
    writer: writer::IssuanceWriter,
    tls_pin: String,
    enroll_binary: Option<PathBuf>,
    enroll_binary_cache: tokio::sync::Mutex<Option<Arc<EnrollBinary>>>,
    default_agent: Option<String>,
    discovery: DiscoverySettings,
    discovery_skips: discovery::SkipLog,
    pve: PveSettings,
    /// What the directory last said about accounts with live sessions.
    directory_answers: sessions::DirectoryAnswers,
}

/// The enrollment tool as served to nodes, with its checksum.
pub struct EnrollBinary {
    pub bytes: Arc<Vec<u8>>,
    pub sha256: String,
}

/// Stores a newly generated CA key together with its audit record.
async fn save_generated_key(store: &Store, row: &CaKeyRow, actor: &str, now: u64) -> Result<(), CaError> {
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

/// What the admin API shows of a CA key (never the encrypted private part).
fn key_info(row: &CaKeyRow) -> portcullis_proto::CaKeyInfo {
    portcullis_proto::CaKeyInfo {
        purpose: row.purpose.clone(),
        state: row.state.clone(),
        algorithm: row.algorithm.clone(),
        fingerprint: row.fingerprint.clone(),
        public_key: row.public_key.clone(),
        created_at: row.created_at,
    }
}

impl Ca {
    /// Opens the database, creates any missing CA key, loads the policy, and records
    /// what it did in the audit log.
    pub async fn open(config: CaConfig, clock: Arc<dyn Clock>) -> Result<Ca, CaError> {
        let policy = load_policy_dir(&config.policy_dir)?;
        let store = Store::open(&config.database_url).await?;
        let now = clock.now_unix();
        let mut keyring = Keyring::load(&store, &config.passphrase).await?;
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
        let oidc = config.oidc.map(crate::identity::oidc::Oidc::new).transpose()?;
        let writer = writer::IssuanceWriter::spawn(store.clone());
        let password_work = Arc::new(WorkLimit::password_hashing());
        let local = LocalUsers::new(store.clone(), Arc::clone(&password_work));
        let ca = Ca {
            oidc,
            sources: std::iter::once(Arc::new(local.clone()) as Arc<dyn IdentitySource>)
                .chain(config.extra_sources)
                .collect(),
            local,
            initial_password_file: Mutex::new(None),
            recordings: recordings::Recordings::new(config.recording_retention),
            store,
            clock,
            passphrase: config.passphrase,
            key_algorithm: config.key_algorithm,
            keys: RwLock::new(Arc::new(keyring)),
            policy: RwLock::new(Arc::new(Policy::empty())),
            policy_dir: config.policy_dir,
            clock_skew: config.clock_skew.as_secs(),
            max_cert_ttl: config.max_cert_ttl,
            session_ttl: config.session_ttl.as_secs(),
            login_throttle: LoginThrottle::new(config.login_failures_per_user, 3600),
            ip_attempts: RateLimiter::new(config.login_attempts_per_ip, 60),
            password_work,
            directory_work: WorkLimit::remote("directory"),
            idp_work: WorkLimit::remote("identity_provider"),
            ticket_requests: RateLimiter::new(TICKETS_PER_USER_PER_MINUTE, 60),
            refusals: Mutex::new(RefusalTally::new(config.refusal_summary_every.as_secs())),
            counters: Counters::default(),
            krl_cache: Mutex::new(None),
            writer,
            tls_pin: config.tls_pin,
            enroll_binary: config.enroll_binary,
            enroll_binary_cache: tokio::sync::Mutex::new(None),
            default_agent: config.default_agent,
            discovery: config.discovery,
            discovery_skips: Default::default(),
            pve: config.pve,
            directory_answers: Default::default(),
        };
        ca.install_policy(policy, SYSTEM_ACTOR).await?;
        Ok(ca)
    }

    pub fn store(&self) -> &Store {
        &self.store
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

    async fn reload_keys(&self) -> Result<(), CaError> {
        let keyring = Keyring::load(&self.store, &self.passphrase).await?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keyring);
        Ok(())
    }

    pub fn tls_pin(&self) -> &str {
        &self.tls_pin
    }

    /// Reads (once) the enrollment binary the CA hands to nodes.
    pub async fn enroll_binary(&self) -> Result<Arc<EnrollBinary>, CaError> {
        let mut cache = self.enroll_binary_cache.lock().await;
        if let Some(binary) = cache.as_ref() {
            return Ok(Arc::clone(binary));
        }
        let path = self.enroll_binary.clone().ok_or(CaError::NotFound("enrollment binary on this CA"))?;
        let bytes = tokio::fs::read(&path).await.map_err(|e| {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the enrollment binary");
            CaError::NotFound("enrollment binary on this CA")
        })?;
        use sha2::Digest;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        let binary = Arc::new(EnrollBinary { bytes: Arc::new(bytes), sha256 });
        *cache = Some(Arc::clone(&binary));
        Ok(binary)
    }

    /// Public keys of `purpose` that verifiers must trust, one OpenSSH line each.
    pub fn trusted_keys(&self, purpose: KeyPurpose) -> String {
        let keyring = self.keyring();
        keyring.trusted(purpose).iter().map(|k| format!("{k}\n")).collect()
    }

    /// Swaps in a validated policy and audits what changed relative to the last one.
    async fn install_policy(&self, policy: Policy, actor: &str) -> Result<portcullis_policies::PolicyDiff, CaError> {
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
        store::save_policy_state(tx.conn(), &digest, &summary_json, now).await?;
        tx.commit().await?;
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        tracing::info!(%digest, "policy loaded");
        Ok(changes)
    }

    /// Records an event that stands alone (a refusal, a failure): nothing else changes
    /// with it, so it gets a transaction of its own.
    pub(crate) async fn audit_alone(&self, event: AuditEvent) -> Result<(), CaError> {
        let mut tx = self.store.begin().await?;
        audit::record(tx.conn(), self.now(), &event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Audits a refusal of an unauthenticated caller: the first of its (source, reason,
    /// user) in a window as `event` itself, repeats only counted into the window's
    /// `refusals_summarized` record (see `portcullis_proto::refusals`).
    pub(crate) async fn audit_refusal(
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
        let Some(s) = due else { return Ok(()) };
        self.audit_alone(AuditEvent::RefusalsSummarized {
            origin: "ca".to_owned(),
            window_start: s.window_start,
            window_end: s.window_end,
            counts: s.counts,
            overflow: s.overflow,
        })
        .await
    }

    /// Creates the first administrator when there are no users at all; returns the
    /// generated password, stored only as a hash. It is one-time: it opens no session,
    /// and the first sign-in with it must choose the administrator's own password.
    pub async fn bootstrap_admin(&self, username: &str, group: &str) -> Result<Option<SecretString>, CaError> {
        if self.store.user_count().await? > 0 {
            return Ok(None);
        }
        let password = auth::random_token("");
        let hash = {
            let pw = password.clone();
            tokio::task::spawn_blocking(move || hash_password(&pw))
                .await
                .map_err(|_| CaError::Internal("hashing task".into()))??
        };
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let one_time = store::NewPassword { hash: &hash, one_time: true };
        if !store::insert_user(tx.conn(), username, Some(one_time), &[group.to_owned()], now).await? {
            // Another replica starting at the same instant created it: its password is
            // the one; this one was never stored, so it is neither shown nor audited.
            return Ok(None);
        }
        audit::record(
            tx.conn(),
            now,
            &AuditEvent::UserChanged {
                actor: SYSTEM_ACTOR.to_owned(),
                username: username.to_owned(),
                change: "bootstrap_admin_created",
                groups: Some(audit::GroupsChange { old: Vec::new(), new: vec![group.to_owned()] }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some(SecretString::from(password)))
    }

    /// `file` holds `username`'s one-time password: it is deleted when that password is
    /// replaced — at once, if it already was (on another replica, or before a restart).
    /// Answers whether the file is still needed.
    pub async fn forget_initial_password_when_replaced(&self, username: &str, file: PathBuf) -> Result<bool, CaError> {
        let pending = self.store.user(username).await?.is_some_and(|u| u.must_change_password);
        if pending {
            *self.initial_password_file.lock().unwrap_or_else(|e| e.into_inner()) = Some((username.to_owned(), file));
        } else {
            remove_initial_password_file(&file);
        }
        Ok(pending)
    }

    /// Called when `username` has chosen their own password.
    fn initial_password_replaced(&self, username: &str) {
        let mut slot = self.initial_password_file.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|(user, _)| user == username)
            && let Some((_, file)) = slot.take()
        {
            remove_initial_password_file(&file);
        }
    }
}

fn remove_initial_password_file(file: &Path) {
    match std::fs::remove_file(file) {
        Ok(()) => {
            tracing::info!(file = %file.display(), "the one-time administrator password was replaced; its file is deleted")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %file.display(), error = %e, "cannot delete the used one-time password file"),
    }
}
