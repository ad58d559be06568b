//! Decisions are values. [`Grant`] and [`CertPermit`] have private fields and no public
//! constructor (and are not `Deserialize`), so code that signs a certificate or performs
//! a privileged action by taking one cannot be reached without asking the policy first.
//! A [`Deny`] carries a reason enum with a stable audit code.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crate::account::{parse_account, qualified_group};
use crate::device::Device;
use crate::permission::Permission;
use crate::proof::Proof;
use crate::srql::TargetQuery;

/// Who is asking, as established by authentication.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// User name; `user = …` bindings and deny statements match it exactly.
    pub username: String,
    /// Groups from the directory; `group = …` bindings and deny statements match them.
    pub groups: BTreeSet<String>,
    /// Where the identity came from ("local", "ldap", "oidc"); carried for audit only (a
    /// group named with its source, `ldap:admins`, is matched against the source the
    /// account name carries).
    pub source: String,
}

impl Identity {
    /// Whether this identity is in the group a policy names. Group names come from several
    /// sources (local users, the directory, the identity provider), and one source's
    /// `admins` need not be another's: `ldap:admins` (a source's name first) is LDAP's group
    /// only, while a bare `admins` is a group of that name from any source. The source is
    /// the one the account name carries (`ldap:alice`; bare for local users), which every
    /// identity has, however it was put together.
    pub(crate) fn in_group(&self, named: &str) -> bool {
        match qualified_group(named) {
            Some((source, group)) => {
                parse_account(&self.username).is_some_and(|(from, _)| from == source) && self.groups.contains(group)
            }
            None => self.groups.contains(named),
        }
    }
}

/// What a user asks for when requesting a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertRequest {
    /// Desired lifetime; capped by the roles. `None` = the maximum allowed.
    pub ttl: Option<Duration>,
    /// Roles to use. `None` = every held role except those that set `force-command`.
    pub roles: Option<Vec<String>>,
}

/// Proof that `username` held what `P` names when the policy engine was asked
/// ([`crate::Policy::authorize`]); an operation that needs a permission takes the grant of
/// its proof type, so a grant for another permission does not compile.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant<P: Proof> {
    username: String,
    permission: Permission,
    /// Every permission the identity held when the grant was made, with where: what it
    /// may hand on (see [`Grant::holds_all`]).
    held: Held,
    /// Where `permission` holds: see [`Grant::covers`].
    reach: Reach,
    proof: PhantomData<fn() -> P>,
}

/// The devices a grant's permission holds for: everywhere when a role without targets
/// grants it, else the devices some granting role's targets match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reach {
    Everywhere,
    Only(Vec<TargetQuery>),
}

impl Reach {
    /// Whether every device `other` reaches is one this reaches, judged by the queries
    /// themselves (a query this one lacks may match devices it does not).
    fn includes(&self, other: &Reach) -> bool {
        match (self, other) {
            (Reach::Everywhere, _) => true,
            (Reach::Only(_), Reach::Everywhere) => false,
            (Reach::Only(mine), Reach::Only(theirs)) => theirs.iter().all(|q| mine.contains(q)),
        }
    }
}

/// The control-plane permissions an identity holds, each with where it holds
/// ([`crate::Policy::held_by`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Held(BTreeMap<Permission, Reach>);

impl Held {
    pub(crate) fn new(held: BTreeMap<Permission, Reach>) -> Held {
        Held(held)
    }
    /// The permissions, without where.
    pub fn permissions(&self) -> BTreeSet<Permission> {
        self.0.keys().copied().collect()
    }
}

impl<P: Proof> Grant<P> {
    pub(crate) fn new(username: &str, permission: Permission, held: Held, reach: Reach) -> Grant<P> {
        Grant { username: username.to_owned(), permission, held, reach, proof: PhantomData }
    }
    /// Whether the permission holds for `device`. A role's `targets` scope what it grants
    /// on devices — a "prod administrator" may kill prod's sessions and read prod's
    /// recordings, not the lab's — while a role without targets grants it everywhere.
    /// Operations on one device's things ask this; see the permissions' documentation
    /// for which do.
    pub fn covers(&self, device: &Device) -> bool {
        self.targets().is_none_or(|queries| queries.iter().any(|q| q.matches(device)))
    }
    /// Whether the permission holds for every device (a listing need not be filtered):
    /// one that targets do not scope always does (e.g. `audit.read`, which also proves
    /// `SessionsRead`).
    pub fn covers_everything(&self) -> bool {
        self.targets().is_none()
    }
    /// The queries of the devices the permission holds for; `None` when it holds for
    /// every device. For what is kept to be checked later, against a device that does
    /// not exist yet (a node an enrollment token will enroll).
    pub fn targets(&self) -> Option<&[TargetQuery]> {
        match &self.reach {
            Reach::Only(queries) if self.permission.scoped_by_targets() => Some(queries),
            _ => None,
        }
    }
    /// Whether the identity holds every administrative permission of `other` too, and
    /// those a role's targets scope at least where `other` holds them — asked before it
    /// makes someone else hold them (a user manager giving groups or resetting a
    /// password), so that managing users is never a way to more control of Portcullis: a
    /// lab administrator who may manage users cannot make anyone (itself included) an
    /// administrator of prod's nodes. Access to devices (`certs.issue`,
    /// `devices.console.open`) is what user managers hand out, and is not asked about.
    pub fn holds_all(&self, other: &Held) -> bool {
        other
            .0
            .iter()
            .filter(|(p, _)| p.is_administrative())
            .all(|(p, where_)| self.held.0.get(p).is_some_and(|mine| !p.scoped_by_targets() || mine.includes(where_)))
    }
    /// The identity the grant is for.
    pub fn username(&self) -> &str {
        &self.username
    }
    /// The permission that proved it (one of `P`'s).
    pub fn permission(&self) -> Permission {
        self.permission
    }
}

/// A principal set that is non-empty by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Principals(BTreeSet<String>);

impl Principals {
    fn new(set: BTreeSet<String>) -> Option<Principals> {
        (!set.is_empty()).then_some(Principals(set))
    }
}

/// Proof that a user certificate with exactly these contents may be signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPermit {
    username: String,
    principals: Principals,
    ttl: Duration,
    extensions: BTreeSet<String>,
    critical_options: BTreeMap<String, String>,
    roles: Vec<String>,
}

/// The parts of a permit, before the non-empty check.
pub(crate) struct PermitParts {
    pub username: String,
    pub principals: BTreeSet<String>,
    pub ttl: Duration,
    pub extensions: BTreeSet<String>,
    pub critical_options: BTreeMap<String, String>,
    pub roles: Vec<String>,
}

impl CertPermit {
    /// `None` if there are no principals or the ttl is zero: such a permit cannot exist.
    pub(crate) fn new(p: PermitParts) -> Option<CertPermit> {
        if p.ttl.is_zero() {
            return None;
        }
        Some(CertPermit {
            username: p.username,
            principals: Principals::new(p.principals)?,
            ttl: p.ttl,
            extensions: p.extensions,
            critical_options: p.critical_options,
            roles: p.roles,
        })
    }
    /// The identity the certificate is for (use it in the key id).
    pub fn username(&self) -> &str {
        &self.username
    }
    /// Scoped principals; never empty.
    pub fn principals(&self) -> &BTreeSet<String> {
        &self.principals.0
    }
    /// Certificate lifetime; never zero.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
    /// OpenSSH extensions to include.
    pub fn extensions(&self) -> &BTreeSet<String> {
        &self.extensions
    }
    /// OpenSSH critical options to include.
    pub fn critical_options(&self) -> &BTreeMap<String, String> {
        &self.critical_options
    }
    /// Names of the roles that contributed principals, sorted.
    pub fn roles(&self) -> &[String] {
        &self.roles
    }
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Deny {
    /// Why.
    pub reason: DenyReason,
}

impl From<DenyReason> for Deny {
    fn from(reason: DenyReason) -> Deny {
        Deny { reason }
    }
}

/// Why a decision was negative. `Debug` has the detail for logs, [`DenyReason::code`] the
/// stable audit code, `Display` a message safe to show the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// No binding gives the identity any role.
    NoRoles,
    /// No held role grants the permission.
    MissingPermission(Permission),
    /// The roles considered yield no login.
    NoLogins,
    /// A deny statement (named) removed what was asked for.
    DeniedByStatement(String),
    /// A requested role does not exist.
    UnknownRole(String),
    /// A requested role exists but is not held.
    RoleNotHeld(String),
    /// The roles considered set different critical options.
    ConflictingCriticalOptions,
    /// The requested certificate lifetime is zero.
    InvalidTtl,
    /// No rule exists for the purpose.
    NoMatchingRule,
    /// Rules exist for the purpose but none targets the device.
    TargetMismatch,
    /// Rules target the device but none has it in scope.
    OutOfScope,
}

impl DenyReason {
    /// Stable snake_case code for audit events.
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::NoRoles => "no_roles",
            DenyReason::MissingPermission(_) => "missing_permission",
            DenyReason::NoLogins => "no_logins",
            DenyReason::DeniedByStatement(_) => "denied_by_statement",
            DenyReason::UnknownRole(_) => "unknown_role",
            DenyReason::RoleNotHeld(_) => "role_not_held",
            DenyReason::ConflictingCriticalOptions => "conflicting_critical_options",
            DenyReason::InvalidTtl => "invalid_ttl",
            DenyReason::NoMatchingRule => "no_matching_rule",
            DenyReason::TargetMismatch => "target_mismatch",
            DenyReason::OutOfScope => "out_of_scope",
        }
    }
}

impl fmt::Display for DenyReason {
    // Deliberately omits policy-internal names (deny statements) and echoes nothing the
    // requester supplied; the detail is in `Debug` for the log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoRoles => f.write_str("no roles are assigned to you"),
            DenyReason::MissingPermission(p) => write!(f, "permission {p} is not granted"),
            DenyReason::NoLogins => f.write_str("no logins are available to you"),
            DenyReason::DeniedByStatement(_) => f.write_str("denied by policy"),
            DenyReason::UnknownRole(_) | DenyReason::RoleNotHeld(_) => {
                f.write_str("a requested role is not available to you")
            }
            DenyReason::ConflictingCriticalOptions => {
                f.write_str("the selected roles set conflicting certificate restrictions; request roles explicitly")
            }
            DenyReason::InvalidTtl => f.write_str("the requested certificate lifetime is invalid"),
            DenyReason::NoMatchingRule => f.write_str("no rule allows this"),
            DenyReason::TargetMismatch => f.write_str("no rule covers this device"),
            DenyReason::OutOfScope => f.write_str("the device is outside every matching rule's scope"),
        }
    }
}
