//! The CA as services, each owning its state: [`Core`] holds what they share (store,
//! clock, keys, policy), [`IdentityService`] says who callers are, [`Issuance`] and
//! [`Revocation`] make and unmake certificates, [`Nodes`] enrolls and describes nodes,
//! [`Sessions`] decides and tracks bastion sessions and console tickets, [`Discovery`]
//! and [`Proxmox`] keep the inventory, [`Recordings`] the session recordings, and
//! [`ServiceIdentities`] the bastions and agents, and [`Admin`] users, CA keys, the policy
//! and the audit trail. [`Ca`] composes them; every API
//! handler is a thin call into one service's method.

mod admin;
mod auth;
mod caller;
mod core;
mod device;
mod directory;
mod discovery;
mod enroll;
mod identity;
mod issuance;
mod metrics;
mod nodes;
pub mod oidc;
pub mod permits;
mod preview;
mod principals;
mod pve;
mod recordings;
mod revocation;
mod services;
mod sessions;
mod tokens;
mod writer;

pub use admin::{Admin, AuditFilter};
pub use caller::{Caller, csrf_token_for, csrf_token_matches};
pub use core::Core;
pub use device::device_of;
pub use discovery::{Discovery, DiscoverySettings, HardwareSummary};
pub use identity::IdentityService;
pub use issuance::Issuance;
pub use nodes::{EnrollBinary, Nodes};
pub use permits::{DiscoveryPermit, SessionPermit};
pub use pve::{Proxmox, PveSettings};
pub use recordings::Recordings;
pub use revocation::Revocation;
pub use services::{ServiceCaller, ServiceIdentities};
pub use sessions::Sessions;

/// 256 random bits as URL-safe text: generated passwords and passphrases.
pub fn random_secret() -> String {
    caller::random_token("")
}

use self::core::CoreConfig;
use crate::clock::Clock;
use crate::error::CaError;
use crate::identity::IdentitySource;
use crate::keys::KeyAlgorithm;
use identity::IdentityConfig;
use secrecy::SecretString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// addresses that failed for that user wait out the hour (see [`crate::ratelimit::LoginThrottle`]).
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
    /// A file beside this CA's other state naming the CA keys it signs with (see
    /// `Core::open`); `None`: not kept (tests, in-process CAs).
    pub key_record: Option<PathBuf>,
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
            key_record: None,
        }
    }
}

/// The CA: the services, composed. Each service keeps its own state and reaches the
/// shared [`Core`] through its own handle, and the few other services it asks through
/// theirs; the API handlers call the service they need through its accessor. `Ca`'s own
/// methods are `/metrics` and the housekeeping round, which span services.
pub struct Ca {
    core: Arc<Core>,
    identity: Arc<IdentityService>,
    issuance: Issuance,
    revocation: Arc<Revocation>,
    nodes: Nodes,
    services: ServiceIdentities,
    sessions: Sessions,
    recordings: Arc<Recordings>,
    discovery: Arc<Discovery>,
    proxmox: Arc<Proxmox>,
    admin: Admin,
}

impl Ca {
    /// Opens the database, creates any missing CA key, loads the policy, and records
    /// what it did in the audit log.
    pub async fn open(config: CaConfig, clock: Arc<dyn Clock>) -> Result<Ca, CaError> {
        let core = Arc::new(
            Core::open(
                CoreConfig {
                    database_url: config.database_url,
                    policy_dir: config.policy_dir,
                    passphrase: config.passphrase,
                    key_algorithm: config.key_algorithm,
                    clock_skew: config.clock_skew,
                    refusal_summary_every: config.refusal_summary_every,
                    default_agent: config.default_agent,
                    key_record: config.key_record,
                },
                clock,
            )
            .await?,
        );
        let identity = Arc::new(IdentityService::new(
            Arc::clone(&core),
            IdentityConfig {
                session_ttl: config.session_ttl,
                login_failures_per_user: config.login_failures_per_user,
                login_attempts_per_ip: config.login_attempts_per_ip,
                extra_sources: config.extra_sources,
                oidc: config.oidc,
            },
        )?);
        let revocation = Arc::new(Revocation::new(Arc::clone(&core)));
        let nodes = Nodes::new(Arc::clone(&core), Arc::clone(&revocation), config.tls_pin, config.enroll_binary);
        let recordings = Arc::new(Recordings::new(Arc::clone(&core), config.recording_retention));
        let discovery = Arc::new(Discovery::new(Arc::clone(&core), config.discovery));
        let proxmox = Arc::new(Proxmox::new(Arc::clone(&core), config.pve));
        let sessions = Sessions::new(
            Arc::clone(&core),
            Arc::clone(&identity),
            Arc::clone(&recordings),
            Arc::clone(&discovery),
            Arc::clone(&proxmox),
        );
        Ok(Ca {
            identity,
            issuance: Issuance::new(Arc::clone(&core), config.max_cert_ttl),
            revocation,
            nodes,
            services: ServiceIdentities::new(Arc::clone(&core), Arc::clone(&proxmox)),
            admin: Admin::new(Arc::clone(&core), Arc::clone(&proxmox)),
            sessions,
            recordings,
            discovery,
            proxmox,
            core,
        })
    }

    /// What every service shares: store, clock, keys, policy.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Who callers are: sign-in, API sessions, directory rechecks.
    pub fn identity(&self) -> &IdentityService {
        &self.identity
    }

    /// User certificates: decided, signed, stored with their audit record.
    pub fn issuance(&self) -> &Issuance {
        &self.issuance
    }

    /// Revocations and the KRL.
    pub fn revocation(&self) -> &Revocation {
        &self.revocation
    }

    /// Nodes: the inventory, enrollment, refresh, principals files.
    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// Hardware discovery: claims and reports from bastions, the hardware inventory.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// Proxmox VE inventory: collection claims and reports, clusters, API secrets.
    pub fn proxmox(&self) -> &Proxmox {
        &self.proxmox
    }

    /// Bastions and edge agents: enrollment, registration, certificates, directory.
    pub fn services(&self) -> &ServiceIdentities {
        &self.services
    }

    /// Bastion sessions, console tickets, device views, bastion events.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Session recordings: chunks from bastions, listing, playback, retention.
    pub fn recordings(&self) -> &Recordings {
        &self.recordings
    }

    /// Administration: local users, CA keys, the policy (reload, preview, history), the
    /// audit trail.
    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// The CA's own timer (every few seconds on each replica): reclaims the leases of
    /// bastions that went quiet even when no bastion heartbeats any more — the only
    /// bastion killed must not leave ghost sessions holding users' caps — writes a
    /// finished window's refusal summary, records console tickets that lapsed unused, forgets
    /// expired OIDC sign-ins in progress,
    /// deletes recordings past their retention, and follows CA key and policy changes
    /// made by other replicas.
    pub async fn housekeeping(&self) -> Result<(), CaError> {
        self.core.follow_key_changes().await?;
        self.core.follow_policy_changes().await?;
        self.core.flush_refusals().await?;
        self.core.store.purge_oidc_pending(self.core.now()).await?;
        self.sessions.purge_connection_proofs().await?;
        self.sessions.audit_lapsed_tickets(self.core.now()).await?;
        self.recordings.expire().await?;
        self.sessions.sweep_leases(self.core.now().saturating_sub(portcullis_proto::bastion::LEASE_TTL_SECS)).await
    }
}
