//! Validated policy items. They are built only by the loader, so holding one means every
//! field passed validation; accessors are read-only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::permission::Permission;
use crate::srql::TargetQuery;

/// A named bundle of logins (on the devices its targets select) and permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub(crate) name: String,
    pub(crate) logins: BTreeSet<String>,
    pub(crate) targets: Option<TargetQuery>,
    pub(crate) permissions: BTreeSet<Permission>,
    pub(crate) max_cert_ttl: Duration,
    pub(crate) extensions: BTreeSet<String>,
    pub(crate) critical_options: BTreeMap<String, String>,
    pub(crate) session: SessionLimits,
}

impl Role {
    /// Unique role name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Logins this role may use on the devices its targets select (may be empty).
    pub fn logins(&self) -> &BTreeSet<String> {
        &self.logins
    }
    /// Devices the logins apply to; `Some` exactly when logins are non-empty.
    pub fn targets(&self) -> Option<&TargetQuery> {
        self.targets.as_ref()
    }
    /// Control-plane permissions.
    pub fn permissions(&self) -> &BTreeSet<Permission> {
        &self.permissions
    }
    /// Whether the role grants `p`.
    pub fn has_permission(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }
    /// Upper bound for certificates this role contributes to (0 < ttl <= 7 days).
    pub fn max_cert_ttl(&self) -> Duration {
        self.max_cert_ttl
    }
    /// OpenSSH certificate extensions, e.g. `permit-pty`.
    pub fn extensions(&self) -> &BTreeSet<String> {
        &self.extensions
    }
    /// OpenSSH critical options (`force-command`, `source-address`, `verify-required`).
    pub fn critical_options(&self) -> &BTreeMap<String, String> {
        &self.critical_options
    }
    /// Whether the role sets a `force-command` (such roles are used only when requested).
    pub fn has_force_command(&self) -> bool {
        self.critical_options.contains_key("force-command")
    }
    /// Session controls for sessions opened under this role.
    pub fn session(&self) -> &SessionLimits {
        &self.session
    }
}

/// Concurrent sessions a role allows when its `session` table names no cap: the seed asks
/// for bounded defaults ("cap concurrent sessions per user, per device, and per edge
/// agent"), so a role written without a cap cannot let one user — or one stolen browser
/// session — open shells without end on one host or through one agent. Generous enough
/// for a person's day (a dozen terminals), a busy host, a site.
pub const DEFAULT_MAX_PER_USER: u32 = 16;
pub const DEFAULT_MAX_PER_DEVICE: u32 = 64;
pub const DEFAULT_MAX_PER_AGENT: u32 = 1024;

/// Session controls. A cap of `None` is no cap; the policy loader never leaves one
/// unset (a role naming none gets the `DEFAULT_MAX_PER_*` caps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Close a session after this much inactivity.
    pub idle: Duration,
    /// Close a session after this long regardless of activity.
    pub absolute: Duration,
    /// Concurrent sessions per user.
    pub max_per_user: Option<u32>,
    /// Concurrent sessions per device.
    pub max_per_device: Option<u32>,
    /// Concurrent sessions per agent.
    pub max_per_agent: Option<u32>,
}

impl SessionLimits {
    /// The stricter of two limits, field by field: the shorter timeout, the smaller cap
    /// (no cap is the loosest). Commutative, associative and never looser than either
    /// side, so combining the limits of several roles does not depend on their order and
    /// one more role can only tighten.
    pub fn stricter(self, other: SessionLimits) -> SessionLimits {
        fn cap(a: Option<u32>, b: Option<u32>) -> Option<u32> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, None) => a,
                (None, b) => b,
            }
        }
        SessionLimits {
            idle: self.idle.min(other.idle),
            absolute: self.absolute.min(other.absolute),
            max_per_user: cap(self.max_per_user, other.max_per_user),
            max_per_device: cap(self.max_per_device, other.max_per_device),
            max_per_agent: cap(self.max_per_agent, other.max_per_agent),
        }
    }

    /// The strictest limits of `roles` (`None` when there are none).
    pub fn strictest<'a>(roles: impl IntoIterator<Item = &'a Role>) -> Option<SessionLimits> {
        roles.into_iter().map(|r| r.session).reduce(SessionLimits::stricter)
    }
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            idle: Duration::from_secs(900),
            absolute: Duration::from_secs(3600),
            max_per_user: Some(DEFAULT_MAX_PER_USER),
            max_per_device: Some(DEFAULT_MAX_PER_DEVICE),
            max_per_agent: Some(DEFAULT_MAX_PER_AGENT),
        }
    }
}

/// Whom a binding (or deny statement) names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// A group from LDAP, OIDC or the local store.
    Group(String),
    /// A single user name.
    User(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Group(g) => write!(f, "group:{g}"),
            Subject::User(u) => write!(f, "user:{u}"),
        }
    }
}

/// A statement that removes logins and/or permissions from matching identities. It can
/// never add anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyStatement {
    pub(crate) name: String,
    pub(crate) users: BTreeSet<String>,
    pub(crate) groups: BTreeSet<String>,
    /// `"*"` removes every login.
    pub(crate) logins: BTreeSet<String>,
    /// `"*"` removes every permission.
    pub(crate) permissions: BTreeSet<String>,
}

impl DenyStatement {
    /// Unique name (used as the audit detail).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Users it applies to.
    pub fn users(&self) -> &BTreeSet<String> {
        &self.users
    }
    /// Groups it applies to.
    pub fn groups(&self) -> &BTreeSet<String> {
        &self.groups
    }
    /// Logins removed (`"*"` = all).
    pub fn logins(&self) -> &BTreeSet<String> {
        &self.logins
    }
    /// Permissions removed, as strings (`"*"` = all).
    pub fn permissions(&self) -> &BTreeSet<String> {
        &self.permissions
    }
    /// Whether this statement removes `login`.
    pub fn removes_login(&self, login: &str) -> bool {
        self.logins.contains("*") || self.logins.contains(login)
    }
    /// Whether this statement removes `p`.
    pub fn removes_permission(&self, p: Permission) -> bool {
        self.permissions.contains("*") || self.permissions.contains(p.as_str())
    }
}

/// What a rule lets the control plane do on a set of devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Interactive SSH through the bastion.
    SshLogin,
    /// Browser console.
    ConsoleAccess,
    /// Hardware discovery over SSH.
    InventoryEnrichment,
}

impl Purpose {
    /// The string form used in policy files and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::SshLogin => "ssh_login",
            Purpose::ConsoleAccess => "console_access",
            Purpose::InventoryEnrichment => "inventory_enrichment",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the control plane checks a device's host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostKeyPolicy {
    /// Only pinned / certified host keys.
    #[default]
    KnownHosts,
    /// Pin the first key seen.
    TrustOnFirstUse,
    /// No verification at all; named so nobody enables it by accident. `skip_verify` (the
    /// ServiceRadar console model's name) is accepted as an alias so its configurations
    /// load; the CA warns whenever a loaded rule uses it.
    #[serde(alias = "skip_verify")]
    DangerSkipVerify,
}

impl HostKeyPolicy {
    /// The string form used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            HostKeyPolicy::KnownHosts => "known_hosts",
            HostKeyPolicy::TrustOnFirstUse => "trust_on_first_use",
            HostKeyPolicy::DangerSkipVerify => "danger_skip_verify",
        }
    }
}

/// What keeps a session alive against its idle limit. The ServiceRadar console model
/// closes a session "without terminal input or output": output counts by default, so a
/// long build or a download printing progress is not cut; `input` makes only the
/// user's own activity count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleCounts {
    Input,
    #[default]
    InputOrOutput,
}

impl IdleCounts {
    /// The string form used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            IdleCounts::Input => "input",
            IdleCounts::InputOrOutput => "input_or_output",
        }
    }
}

/// Session recording on an `ssh_login` or `console_access` rule (`record = true`):
/// terminal output (and input with `record_input`) in asciicast v2, bounded in size.
/// Off unless a rule asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Recording {
    pub(crate) input: bool,
    pub(crate) max_bytes: u64,
    pub(crate) over_limit: OverLimit,
}

impl Recording {
    /// Default `record_max_mib`.
    pub const DEFAULT_MAX_MIB: u64 = 16;
    /// Largest `record_max_mib`.
    pub const MAX_MIB: u64 = 1024;

    /// Whether keystrokes are recorded too (they may hold passwords typed at prompts).
    pub fn input(&self) -> bool {
        self.input
    }
    /// The most recorded bytes (before encoding) one session keeps.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
    /// What happens to a session whose recording reaches `max_bytes`.
    pub fn over_limit(&self) -> OverLimit {
        self.over_limit
    }
}

/// `record_over_limit`: a session whose recording is full goes on unrecorded (`stop`,
/// the default) or is closed (`close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverLimit {
    #[default]
    Stop,
    Close,
}

impl OverLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            OverLimit::Stop => "stop",
            OverLimit::Close => "close",
        }
    }
}

/// Where a rule applies. A non-empty dimension must contain the device's value; an empty
/// one does not constrain. At least one dimension is non-empty: an empty scope never
/// means "any scope".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    pub(crate) partitions: BTreeSet<String>,
    pub(crate) agents: BTreeSet<String>,
    pub(crate) gateways: BTreeSet<String>,
}

impl Scope {
    /// Allowed partitions.
    pub fn partitions(&self) -> &BTreeSet<String> {
        &self.partitions
    }
    /// Allowed agents.
    pub fn agents(&self) -> &BTreeSet<String> {
        &self.agents
    }
    /// Allowed gateways.
    pub fn gateways(&self) -> &BTreeSet<String> {
        &self.gateways
    }
    /// Whether a device with these attributes is inside the scope. A missing attribute is
    /// outside any dimension that constrains it.
    pub fn includes(&self, partition: Option<&str>, agent: Option<&str>, gateway: Option<&str>) -> bool {
        fn dim(set: &BTreeSet<String>, v: Option<&str>) -> bool {
            set.is_empty() || v.is_some_and(|v| set.contains(v))
        }
        dim(&self.partitions, partition) && dim(&self.agents, agent) && dim(&self.gateways, gateway)
    }
    /// [`Scope::includes`] with the device's own partition, agent and gateway.
    pub fn includes_device(&self, device: &Device) -> bool {
        self.includes(device.partition.as_deref(), device.agent.as_deref(), device.gateway.as_deref())
    }
}

/// How a purpose reaches a set of devices (ServiceRadar credential rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub(crate) name: String,
    pub(crate) purpose: Purpose,
    pub(crate) targets: TargetQuery,
    pub(crate) scope: Scope,
    pub(crate) host_key_policy: HostKeyPolicy,
    pub(crate) timeout: Duration,
    /// `None`: the device's SSH port only.
    pub(crate) allowed_ports: Option<BTreeSet<u16>>,
    pub(crate) idle_counts: IdleCounts,
    /// Step-up re-authentication: sessions under the rule need a sign-in at most this old.
    pub(crate) fresh_auth_within: Option<Duration>,
    /// Session recording (`None`: sessions under the rule are not recorded).
    pub(crate) recording: Option<Recording>,
    /// `Some` for a credential rule (an API token the control plane uses on the devices'
    /// behalf); `None` for the SSH-certificate rules of every other purpose.
    pub(crate) credential: Option<Credential>,
}

/// Which API a credential rule collects from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// The Proxmox VE API (port 8006).
    Proxmox,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Proxmox => "proxmox",
        }
    }
}

/// How a credential rule authenticates to its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`.
    ProxmoxApiToken,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ProxmoxApiToken => "proxmox_api_token",
        }
    }
}

/// The API credential of an `inventory_enrichment` rule (the ServiceRadar seed's
/// "credential rules"). The rule names a stored secret; the secret itself is never in a
/// policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub(crate) provider: Provider,
    pub(crate) auth_method: AuthMethod,
    pub(crate) secret: String,
    pub(crate) api_port: u16,
    pub(crate) auto_discovery_trials: bool,
    pub(crate) strict_permissions: bool,
}

/// What a stored secret may be named, so a rule can only name one that can exist.
pub const SECRET_NAME_RULE: &str = "1-64 of A-Z a-z 0-9 _ . -";

pub fn valid_secret_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The port of the Proxmox VE API.
pub const DEFAULT_PROXMOX_API_PORT: u16 = 8006;

impl Credential {
    pub fn provider(&self) -> Provider {
        self.provider
    }
    pub fn auth_method(&self) -> AuthMethod {
        self.auth_method
    }
    /// The name of the stored secret (`portcullis admin secret add NAME`).
    pub fn secret(&self) -> &str {
        &self.secret
    }
    /// Where the API listens on each device (default [`DEFAULT_PROXMOX_API_PORT`]).
    pub fn api_port(&self) -> u16 {
        self.api_port
    }
    /// Whether the token may be tried on candidate devices not yet confirmed to run the
    /// provider's API (off by default; every attempt is audited).
    pub fn auto_discovery_trials(&self) -> bool {
        self.auto_discovery_trials
    }
    /// Refuse to collect with a token that holds write privileges (instead of warning).
    pub fn strict_permissions(&self) -> bool {
        self.strict_permissions
    }
}

impl Rule {
    /// Unique rule name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// What the rule is for.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }
    /// Devices the rule covers.
    pub fn targets(&self) -> &TargetQuery {
        &self.targets
    }
    /// Agents / gateways / partitions the rule covers.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }
    /// Host key checking for connections made under this rule.
    pub fn host_key_policy(&self) -> HostKeyPolicy {
        self.host_key_policy
    }
    /// Connect timeout (1 ms ..= 120 s).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
    /// The ports the rule names (non-empty, no 0); `None` when it names none, which
    /// means the device's SSH port.
    pub fn allowed_ports(&self) -> Option<&BTreeSet<u16>> {
        self.allowed_ports.as_ref()
    }
    /// What counts as activity for a session's idle limit under this rule.
    pub fn idle_counts(&self) -> IdleCounts {
        self.idle_counts
    }
    /// Step-up: how recent the user's sign-in must be for a session under this rule
    /// (`None`: any sign-in the credential still carries).
    pub fn fresh_auth_within(&self) -> Option<Duration> {
        self.fresh_auth_within
    }
    /// Whether and how sessions under this rule are recorded.
    pub fn recording(&self) -> Option<Recording> {
        self.recording
    }
    /// The API credential of a credential rule; `None` for SSH-certificate rules.
    pub fn credential(&self) -> Option<&Credential> {
        self.credential.as_ref()
    }
    /// Whether a session under this rule may open `port` on `device`: a port the rule
    /// names, or else only the device's own SSH port (which is not always 22).
    pub fn permits_port(&self, device: &Device, port: u16) -> bool {
        match &self.allowed_ports {
            Some(ports) => ports.contains(&port),
            None => port == device.ssh_port_or_default(),
        }
    }

    /// This rule with the protections it lacks and `other` has (see
    /// `Policy::match_rule`): `other`'s recording when this one records nothing, its
    /// step-up when this one asks none. What this rule sets itself stays as it is —
    /// its recording's cap and input, its ports, host-key policy, timeout and idle
    /// counting: a narrower rule sets those on purpose (stop at the cap, trust on first
    /// use, another port) under a broad default rule.
    pub(crate) fn with_protections_of(mut self, other: &Rule) -> Rule {
        self.recording = self.recording.or(other.recording);
        self.fresh_auth_within = self.fresh_auth_within.or(other.fresh_auth_within);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator: property tests without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn limits(&mut self) -> SessionLimits {
            let mut cap = || match self.next() % 4 {
                0 => None,
                n => Some(u32::try_from(n * 3).unwrap_or(1)),
            };
            let (u, d, a) = (cap(), cap(), cap());
            SessionLimits {
                idle: Duration::from_secs(self.next() % 5000 + 1),
                absolute: Duration::from_secs(self.next() % 50_000 + 1),
                max_per_user: u,
                max_per_device: d,
                max_per_agent: a,
            }
        }
    }

    fn no_looser(a: &SessionLimits, b: &SessionLimits) -> bool {
        let cap = |x: Option<u32>, y: Option<u32>| match (x, y) {
            (Some(x), Some(y)) => x <= y,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        a.idle <= b.idle
            && a.absolute <= b.absolute
            && cap(a.max_per_user, b.max_per_user)
            && cap(a.max_per_device, b.max_per_device)
            && cap(a.max_per_agent, b.max_per_agent)
    }

    #[test]
    fn property_one_more_role_never_loosens_and_order_never_matters() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..2000 {
            let n = usize::try_from(rng.next() % 6).unwrap_or(0) + 1;
            let limits: Vec<SessionLimits> = (0..n).map(|_| rng.limits()).collect();
            let combined = limits.iter().copied().reduce(SessionLimits::stricter).unwrap();
            for l in &limits {
                assert!(no_looser(&combined, l), "the combination is looser than one role: {combined:?} vs {l:?}");
            }
            let extra = rng.limits();
            let more = combined.stricter(extra);
            assert!(no_looser(&more, &combined), "one more role loosened {combined:?} to {more:?}");
            let mut reversed = limits.clone();
            reversed.reverse();
            assert_eq!(reversed.into_iter().reduce(SessionLimits::stricter).unwrap(), combined);
        }
    }
}
