//! The validated policy: the union of all policy sources.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{DenyStatement, Role, Rule, Subject};
use crate::permission::Permission;

/// A validated, immutable policy. Only [`Policy::from_sources`] and [`Policy::empty`]
/// create one (`from_sources` is the loader's, in `load`), so holding a `Policy` means every item passed validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub(crate) roles: BTreeMap<String, Role>,
    /// Repeated bindings of one subject are merged.
    pub(crate) bindings: BTreeMap<Subject, BTreeSet<String>>,
    pub(crate) denies: BTreeMap<String, DenyStatement>,
    pub(crate) rules: BTreeMap<String, Rule>,
    /// Each role's scoped principal per login → (role, login), for
    /// [`Policy::principal_owner`] (built once at load, asked per session heartbeat).
    pub(crate) scoped: HashMap<String, (String, String)>,
}

impl Policy {
    /// A policy that grants nothing.
    pub fn empty() -> Policy {
        Policy::default()
    }

    /// Roles by name order.
    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    /// The role called `name`.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// The role and login a scoped principal stands for ([`crate::scoped_principal`]);
    /// `None` for one no role of this policy makes.
    pub fn principal_owner(&self, principal: &str) -> Option<(&Role, &str)> {
        let (role, login) = self.scoped.get(principal)?;
        Some((self.roles.get(role)?, login.as_str()))
    }

    /// Bindings, merged per subject.
    pub fn bindings(&self) -> &BTreeMap<Subject, BTreeSet<String>> {
        &self.bindings
    }

    /// Whether a binding or a deny statement names the user `account` itself (not a
    /// group of theirs).
    pub fn names_user(&self, account: &str) -> bool {
        self.bindings.contains_key(&Subject::User(account.to_owned()))
            || self.denies.values().any(|d| d.users.contains(account))
    }

    /// Group names the bindings and deny statements use without a source (`admins`, not
    /// `ldap:admins`): each matches a group of that name from every source.
    pub fn groups_from_any_source(&self) -> BTreeSet<&str> {
        let bound = self.bindings.keys().filter_map(|s| match s {
            Subject::Group(g) => Some(g.as_str()),
            Subject::User(_) => None,
        });
        let denied = self.denies.values().flat_map(|d| d.groups.iter().map(String::as_str));
        bound.chain(denied).filter(|g| crate::account::qualified_group(g).is_none()).collect()
    }

    /// Roles with a target query that also grant permissions the query does not limit
    /// ([`Permission::scoped_by_targets`]), with those permissions: they hold for every
    /// device, which a role's author may not expect.
    pub fn targeted_roles_with_unscoped_permissions(&self) -> Vec<(&str, Vec<Permission>)> {
        self.roles
            .values()
            .filter(|r| r.targets().is_some())
            .map(|r| (r.name(), r.permissions().iter().copied().filter(|p| !p.scoped_by_targets()).collect::<Vec<_>>()))
            .filter(|(_, unscoped)| !unscoped.is_empty())
            .collect()
    }

    /// Whether a deny statement names a group that an identity from `source` could be
    /// in (a bare name, or one qualified with that source): an identity whose groups
    /// are unknown cannot be judged against it.
    pub fn denies_groups_of(&self, source: crate::UserSource) -> bool {
        self.denies
            .values()
            .flat_map(|d| d.groups.iter())
            .any(|group| crate::account::qualified_group(group).is_none_or(|(from, _)| from == source))
    }

    /// Whether an identity provider's sign-in that stated no groups (`groups_unknown`)
    /// can be judged under this policy: not once a deny names a group it could be in.
    /// Such a sign-in, its certificates, tickets and sessions are refused then.
    pub fn cannot_judge(&self, groups_unknown: bool) -> bool {
        groups_unknown && self.denies_groups_of(crate::UserSource::Oidc)
    }

    /// Deny statements by name order.
    pub fn denies(&self) -> impl Iterator<Item = &DenyStatement> {
        self.denies.values()
    }

    /// Rules by name order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }

    /// The rule called `name`.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.get(name)
    }
}
